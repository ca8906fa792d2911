"""Shared fixtures: the real shared data and tiny random models built on the real GPT-2 tokenizer."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

# The fast decoding path over fp32 weights gives exactly the reference model's tokens, which many tests compare
# across paths; the int8 path (the default on CPUs with fast bf16) is tested on its own in test_fastpath.py.
os.environ.setdefault("PERSONAGPT_FAST_PATH", "fp32")
# Likewise the engine runs on torch, where llama-cpp-python would be chosen if installed; the llama.cpp backend is
# tested on its own in test_llamacpp.py.
os.environ.setdefault("PERSONAGPT_BACKEND", "torch")

from personagpt.format import PromptFormat  # noqa: E402
from personagpt.models.load import build_gpt2, load_tokenizer, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PERSONAGPT_DATA", REPO.parent / "shared" / "data"))
PERSONACHAT = SHARED / "personachat"
GPT2_BPE = SHARED / "tokenizer" / "gpt2"


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(GPT2_BPE)


@pytest.fixture(scope="session")
def fmt(tokenizer) -> PromptFormat:
    return PromptFormat(tokenizer)


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    return build_gpt2(tokenizer, n_layer=2, n_embd=32, n_head=2, n_positions=256)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model, tokenizer) -> Path:
    return save_checkpoint(tiny_model, tokenizer, tmp_path_factory.mktemp("tiny") / "model")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """An app served by uvicorn on a free loopback port, in a thread, until the block ends."""

    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.app = app

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("server did not come up")

    @property
    def engine(self):
        return self.app.state.personagpt.engine

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def no_eos(model, fmt):
    """The model never ends a reply (deterministic long generations for queue, cancellation and page tests)."""
    def hook(module, args, logits):
        logits[..., fmt.eos_id] = float("-inf")
    model.get_output_embeddings().register_forward_hook(hook)
    return model
