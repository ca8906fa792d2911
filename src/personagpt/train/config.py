"""Training configuration: one dataclass, readable from ``.json``, ``.toml`` or the original's ``.env`` files.

Each field's ``help`` metadata is the one place its meaning is written: the ``train`` command derives its flags
from these fields.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from personagpt.errors import SettingsError
from personagpt.format import MAX_SEQUENCE_LENGTH

PHASES = ("pretrain", "train_loop")


def _opt(default, help: str, **kwargs):
    """A dataclass field with help text (lists get a fresh default)."""
    if isinstance(default, list):
        return field(default_factory=list, metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainConfig:
    """Everything a run needs; plain data so it can live in a file (JSON, TOML or the original's .env)."""

    model: str | None = _opt(None, "Base model to fine-tune: hub id, local directory or smollm2-135m.")
    from_scratch: str | None = _opt(None, "Train a random GPT-2 of LAYERSxWIDTH (e.g. 6x384) instead of --model.")
    tokenizer: str | None = _opt(None, "Tokenizer directory (with --from-scratch).")
    init_from: str | None = _opt(None, "Start from weights an earlier run wrote (its model/ dir: full model or "
                                       "LoRA adapter).")
    data: list[str] = _opt([], "Persona dialogues: ConvAI2 text, JSONL or a directory of them (repeatable).")
    ctrl_data: list[str] = _opt([], "Action-code JSONL {goal, facts, history, response} (repeatable).")
    eval_data: str | None = _opt(None, "Dialogues for validation loss.")
    output_dir: str = _opt("runs/personagpt", "Run directory: checkpoints, stats, samples/loss.png, model/.")
    phase: str = _opt("pretrain", "pretrain or train_loop (set by --phase).", cli=False)
    epochs: float = _opt(1.0, "Passes over the persona data.")
    max_steps: int | None = _opt(None, "Optimizer steps (overrides --epochs).")
    learning_rate: float = _opt(5e-5, "Peak learning rate.", flags=("--learning-rate", "--lr"))
    weight_decay: float = _opt(0.0, "AdamW weight decay (not on norms and biases).")
    warmup_steps: int = _opt(0, "Linear warmup steps.")
    batch_size: int = _opt(8, "Sequences per batch, per process.")
    gradient_accumulation_steps: int = _opt(1, "Micro-batches per optimizer step.")
    max_grad_norm: float = _opt(1.0, "Gradient clipping (0: off).")
    max_length: int = _opt(MAX_SEQUENCE_LENGTH, "Longest training sequence in tokens.")
    ctrl_ratio: float = _opt(0.5, "train_loop: fraction of micro-batches from the action-code data.")
    logging_steps: int = _opt(10, "Log losses every N steps.")
    save_steps: int = _opt(500, "Checkpoint every N steps.")
    save_total_limit: int = _opt(2, "Checkpoints kept.")
    eval_steps: int = _opt(0, "Validate every N steps (0: at the end only).")
    eval_limit: int | None = _opt(256, "Validation sequences used (default 256).")
    seed: int = _opt(42, "Seed for initialisation, data order and dropout.")
    mixed_precision: str = _opt("auto", "auto, no, bf16 or fp16 (auto: bf16 where the hardware is fast at it).")
    lora: bool = _opt(False, "LoRA adapters (+ trainable new-token rows) or full fine-tuning.",
                      flags=("--lora/--full",))
    lora_r: int = _opt(16, "LoRA rank.")
    lora_alpha: int = _opt(32, "LoRA scaling numerator.")
    lora_dropout: float = _opt(0.05, "Dropout on the LoRA path.")
    cache_dir: str | None = _opt(None, "Tokenized-data cache (default: next to the run directory).")
    pad_multiple: int = _opt(64, "Batch widths are padded to multiples of this (a few fixed shapes).")

    def validate(self) -> None:
        if self.phase not in PHASES:
            raise SettingsError(f"phase must be one of {', '.join(PHASES)}, not {self.phase!r}")
        if not self.data:
            raise SettingsError("no training data: pass --data (ConvAI2 text or JSONL dialogues)")
        if self.phase == "train_loop" and not self.ctrl_data:
            raise SettingsError("train_loop mixes in action-code data: pass --ctrl-data (JSONL of goal/history/response)")
        if bool(self.model) == bool(self.from_scratch):
            raise SettingsError("give exactly one of --model (a base to fine-tune) and --from-scratch LAYERSxWIDTH")
        if self.from_scratch and not self.tokenizer:
            raise SettingsError("--from-scratch needs --tokenizer (e.g. the GPT-2 BPE directory)")
        if self.from_scratch and self.lora:
            raise SettingsError("LoRA needs a pretrained base; train from scratch with full fine-tuning")
        if not 0 <= self.ctrl_ratio < 1:
            raise SettingsError("ctrl_ratio must be in [0, 1)")
        for name in ("batch_size", "gradient_accumulation_steps", "logging_steps", "save_steps", "max_length",
                     "pad_multiple"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise SettingsError("mixed_precision must be auto, no, bf16 or fp16")


# The original's .env keys (load_configs.py) and what they mean here.
ENV_KEYS = {"save_path": "output_dir", "data_path": "data", "epochs": "epochs", "learn_rate": "learning_rate",
            "gradient_accumulation_steps": "gradient_accumulation_steps", "batch_size": "batch_size",
            "weight_decay": "weight_decay", "logging_steps": "logging_steps", "save_steps": "save_steps"}


def read_config_file(path: str | os.PathLike) -> dict:
    """Settings from a ``.json``, ``.toml`` or ``.env`` (KEY=VALUE, the original's keys) file."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"{path}: no such config file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            raw = json.loads(text)
        elif path.suffix == ".toml":
            raw = tomllib.loads(text)
        else:
            raw = {}
            for lineno, line in enumerate(text.splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                key, eq, value = line.removeprefix("export ").partition("=")
                if not eq:
                    raise SettingsError(f"{path}:{lineno}: expected KEY=VALUE")
                raw[key.strip()] = value.strip().strip("'\"")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise SettingsError(f"{path}: {e}") from None
    known = {f.name for f in fields(TrainConfig)}
    settings = {}
    for key, value in raw.items():
        name = ENV_KEYS.get(key, key)
        if name not in known:
            raise SettingsError(f"{path}: unknown setting {key!r}")
        settings[name] = _coerce(name, value, path)
    return settings


def _coerce(name: str, value, path: Path):
    default = getattr(TrainConfig(), name)
    if name in ("data", "ctrl_data"):
        return expand_data_paths(value if isinstance(value, list) else [value])
    if not isinstance(value, str):
        return value
    try:
        if isinstance(default, bool):
            return value.lower() in ("1", "true", "yes", "on")
        if isinstance(default, int) or name in ("max_steps", "eval_limit"):
            return int(float(value))
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise SettingsError(f"{path}: {name} must be a number, got {value!r}") from None
    return value


def expand_data_paths(values) -> list[str]:
    """Data paths with each directory replaced by its dialogue files, as the original's data_path did."""
    out = []
    for value in values:
        path = Path(str(value))
        if path.is_dir():
            out += [str(p) for p in sorted(path.iterdir()) if p.suffix in (".txt", ".jsonl")]
        else:
            out.append(str(path))
    return out
