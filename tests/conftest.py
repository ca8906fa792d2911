"""Shared fixtures: the real shared data and tiny random models built on the real GPT-2 tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from personagpt.format import PromptFormat
from personagpt.models import build_gpt2, load_tokenizer, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__import__("os").environ.get("PERSONAGPT_DATA", REPO.parent / "shared" / "data"))
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
