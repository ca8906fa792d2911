"""Loading and saving models: hub ids, local checkpoints, LoRA adapters, and small random GPT-2s.

Every loaded tokenizer gets the PersonaGPT special tokens (a no-op for checkpoints that already have them) and
the model's embeddings are resized to match.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

from personagpt.format import add_special_tokens

# Hub ids that work when a network exists; any causal LM id does.
HUB_MODELS = {
    "personagpt": "af1tang/personaGPT",
    "dialogpt-medium": "microsoft/DialoGPT-medium",
    "gpt2": "gpt2",
}

# Set once a bundled default model ships; until then commands need --model.
DEFAULT_MODEL: str | None = None


class ModelNotFoundError(RuntimeError):
    """The model could not be found locally and could not be downloaded."""


def resolve_model_name(name: str | None) -> str:
    """The model to load: ``name`` (a short alias, hub id or path), else the bundled default."""
    if name:
        return HUB_MODELS.get(name, name)
    if DEFAULT_MODEL is None:
        raise ModelNotFoundError(
            "no --model given and no default model is bundled yet: pass --model with a local checkpoint "
            "directory (e.g. one written by `personagpt train`) or a Hugging Face hub id such as "
            "af1tang/personaGPT (needs a network)")
    return DEFAULT_MODEL


def load_tokenizer(name_or_path: str | os.PathLike):
    """A tokenizer with the PersonaGPT tokens; works offline for local directories."""
    path = Path(name_or_path)
    # bare GPT-2 BPE files (vocab.json + merges.txt, no config) as in the shared data
    bare_bpe = (path / "merges.txt").is_file() and not (path / "tokenizer_config.json").is_file()
    tokenizer = _from_pretrained(GPT2Tokenizer if bare_bpe else AutoTokenizer, str(name_or_path))
    add_special_tokens(tokenizer)
    return tokenizer


def load_model(name_or_path: str | os.PathLike | None, *, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None):
    """Load ``(model, tokenizer)`` from a hub id, a local checkpoint, or a LoRA adapter directory.

    The model is in eval mode on ``device`` (default: CUDA when available, else CPU).
    """
    name = resolve_model_name(str(name_or_path) if name_or_path is not None else None)
    path = Path(name)
    if path.is_dir() and (path / "adapter_config.json").is_file():
        model, tokenizer = _load_adapter(path, dtype)
    else:
        tokenizer = load_tokenizer(name)
        model = _from_pretrained(AutoModelForCausalLM, name, dtype=dtype)
        add_special_tokens(tokenizer, model)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


def _load_adapter(path: Path, dtype):
    from peft import PeftModel

    base_name = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    tokenizer = load_tokenizer(path)
    base = _from_pretrained(AutoModelForCausalLM, base_name, dtype=dtype)
    add_special_tokens(tokenizer, base)
    return PeftModel.from_pretrained(base, str(path)), tokenizer


def save_checkpoint(model, tokenizer, path: str | os.PathLike) -> Path:
    """Write model (safetensors) and tokenizer to ``path``; loadable with :func:`load_model`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_gpt2(tokenizer, *, n_layer: int = 2, n_embd: int = 32, n_head: int = 2, n_positions: int = 1024,
               dropout: float = 0.1, seed: int = 0) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 sized to ``tokenizer`` (tests, benchmarks, train-from-scratch baselines)."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                        n_positions=n_positions, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                        bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(config).eval()


def _from_pretrained(cls, name: str, **kwargs):
    """``cls.from_pretrained`` that fails fast and clearly when a hub id can't be reached."""
    local = Path(name).exists()
    if not local and not _hub_reachable():
        kwargs["local_files_only"] = True  # only the local HF cache; skips minutes of retries
    if kwargs.get("dtype") is None:
        kwargs.pop("dtype", None)
    try:
        return cls.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as e:
        if local:
            raise ModelNotFoundError(f"{name}: not a loadable model checkpoint ({e})") from None
        raise ModelNotFoundError(
            f"model {name!r} is not in the local cache and the Hugging Face hub cannot be reached. "
            "Pass --model with a local checkpoint directory (e.g. one written by `personagpt train` or "
            "`save_pretrained`)") from None


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False
