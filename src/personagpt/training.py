"""Training: ``pretrain`` (persona data) and ``train_loop`` (persona + action-code data), as in the original.

Batched with length buckets, gradient accumulation, AdamW with linear warmup/decay, clipping, bf16/fp16 autocast,
full fine-tuning or LoRA, checkpoints that are atomic and resumable to the exact step, and multi-process runs via
Accelerate (``accelerate launch`` or ``torchrun``). The whole data order is a pure function of (seed, step), so a
resumed or distributed run sees exactly the batches an uninterrupted single-process run would.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import random
import shutil
import signal
import time
import tomllib
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from personagpt.dataset import IGNORE_INDEX, Batch, TokenizedDataset, collate, plan_batches, prepare
from personagpt.format import SPECIAL_TOKENS, PromptFormat, add_special_tokens
from personagpt.models import resolve_mixed_precision

PHASES = ("pretrain", "train_loop")
# The loss names each phase logs, as in the original.
LOSS_NAMES = {"pretrain": {"persona": "pretrain_loss"}, "train_loop": {"persona": "persona_loss", "control": "ctrl_loss"}}


@dataclass
class TrainConfig:
    """Everything a run needs; plain data so it can live in a file (JSON, TOML or the original's .env)."""

    model: str | None = None  # base: hub id or local dir (None with from_scratch)
    from_scratch: str | None = None  # "LAYERSxWIDTH": a random GPT-2 on `tokenizer` instead of `model`
    tokenizer: str | None = None  # needed with from_scratch
    init_from: str | None = None  # start from weights a previous phase wrote (checkpoint or adapter dir)
    data: list[str] = field(default_factory=list)  # persona dialogues: ConvAI2 text or JSONL
    ctrl_data: list[str] = field(default_factory=list)  # action-code JSONL (train_loop)
    eval_data: str | None = None  # dialogues for validation loss
    output_dir: str = "runs/personagpt"
    phase: str = "pretrain"
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    batch_size: int = 8  # per process
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    max_length: int = 512
    ctrl_ratio: float = 0.5  # train_loop: fraction of micro-batches from the action-code data
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int = 2
    eval_steps: int = 0  # 0: validate only at the end
    eval_limit: int | None = 256  # validation examples (None: all)
    seed: int = 42
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    cache_dir: str | None = None  # tokenized-data cache (default: OUTPUT_DIR/../.data-cache)
    pad_multiple: int = 64

    def validate(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}, not {self.phase!r}")
        if not self.data:
            raise ValueError("no training data: pass --data (ConvAI2 text or JSONL dialogues)")
        if self.phase == "train_loop" and not self.ctrl_data:
            raise ValueError("train_loop mixes in action-code data: pass --ctrl-data (JSONL of goal/history/response)")
        if bool(self.model) == bool(self.from_scratch):
            raise ValueError("give exactly one of --model (a base to fine-tune) and --from-scratch LAYERSxWIDTH")
        if self.from_scratch and not self.tokenizer:
            raise ValueError("--from-scratch needs --tokenizer (e.g. the GPT-2 BPE directory)")
        if self.from_scratch and self.lora:
            raise ValueError("LoRA needs a pretrained base; train from scratch with full fine-tuning")
        if not 0 <= self.ctrl_ratio < 1:
            raise ValueError("ctrl_ratio must be in [0, 1)")
        for name in ("batch_size", "gradient_accumulation_steps", "logging_steps", "save_steps", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError("mixed_precision must be auto, no, bf16 or fp16")


# The original's .env keys (load_configs.py) and what they mean here.
ENV_KEYS = {"save_path": "output_dir", "data_path": "data", "epochs": "epochs", "learn_rate": "learning_rate",
            "gradient_accumulation_steps": "gradient_accumulation_steps", "batch_size": "batch_size",
            "weight_decay": "weight_decay", "logging_steps": "logging_steps", "save_steps": "save_steps"}


def read_config_file(path: str | os.PathLike) -> dict:
    """Settings from a ``.json``, ``.toml`` or ``.env`` (KEY=VALUE, the original's keys) file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such config file")
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
                    raise ValueError(f"{path}:{lineno}: expected KEY=VALUE")
                raw[key.strip()] = value.strip().strip("'\"")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path}: {e}") from None
    known = {f.name: f for f in fields(TrainConfig)}
    settings = {}
    for key, value in raw.items():
        name = ENV_KEYS.get(key, key)
        if name not in known:
            raise ValueError(f"{path}: unknown setting {key!r}")
        settings[name] = _coerce(name, value, path)
    return settings


def _coerce(name: str, value, path: Path):
    default = getattr(TrainConfig(), name)
    if name in ("data", "ctrl_data"):
        values = value if isinstance(value, list) else [value]
        return [str(p) for v in values for p in _expand_data_path(str(v))]
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
        raise ValueError(f"{path}: {name} must be a number, got {value!r}") from None
    return value


def _expand_data_path(value: str) -> list[Path]:
    """A directory stands for its dialogue files, as the original's data_path did."""
    path = Path(value)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".txt", ".jsonl"))
    return [path]


# ---- model -------------------------------------------------------------------------------------------------------

def build_model(config: TrainConfig, checkpoint: Path | None = None):
    """The model and tokenizer to train: the base (or a random GPT-2), optionally LoRA-wrapped.

    With ``checkpoint`` (a checkpoint of this run, or the output of an earlier phase) the weights come from
    there: the whole model, or for LoRA the adapter on top of the base.
    """
    from transformers import AutoModelForCausalLM

    from personagpt.models import _from_pretrained, build_gpt2, load_tokenizer, resolve_model_name

    if config.from_scratch:
        tokenizer = load_tokenizer(checkpoint or config.tokenizer)
        if checkpoint:
            model = _from_pretrained(AutoModelForCausalLM, str(checkpoint))
        else:
            layers, width = _parse_shape(config.from_scratch)
            model = build_gpt2(tokenizer, n_layer=layers, n_embd=width, n_head=max(1, width // 64),
                               n_positions=max(1024, config.max_length), seed=config.seed)
    elif config.lora:
        from peft import LoraConfig, PeftModel, get_peft_model

        base_path = resolve_model_name(config.model)
        tokenizer = load_tokenizer(checkpoint or base_path)
        base = _from_pretrained(AutoModelForCausalLM, base_path)
        add_special_tokens(tokenizer, base)
        if checkpoint:
            model = PeftModel.from_pretrained(base, str(checkpoint), is_trainable=True)
        else:
            new_ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
            model = get_peft_model(base, LoraConfig(
                r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                target_modules="all-linear", trainable_token_indices=new_ids, task_type="CAUSAL_LM"))
        # record the name the user gave (an alias or hub id), not a machine-specific cache path
        model.peft_config["default"].base_model_name_or_path = config.model
    else:
        source = str(checkpoint) if checkpoint else resolve_model_name(config.model)
        tokenizer = load_tokenizer(source)
        model = _from_pretrained(AutoModelForCausalLM, source)
    add_special_tokens(tokenizer, model)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _parse_shape(spec: str) -> tuple[int, int]:
    try:
        layers, width = (int(x) for x in spec.lower().split("x"))
    except ValueError:
        raise ValueError(f"--from-scratch expects LAYERSxWIDTH such as 6x384, got {spec!r}") from None
    return layers, width


class TargetLoss(nn.Module):
    """Summed cross-entropy over target tokens only; the output layer runs on those positions alone.

    Projecting every position onto a 50k vocabulary would cost batch x length x vocab floats; targets are
    under half the tokens. The projection runs in chunks of a fixed number of rows (the last one padded), so
    its large buffers have the same shape every step: with freed memory kept in the process (see
    ``keep_freed_memory``) a different size each step would fragment the heap until it runs out.
    Wrapping this (not the bare LM) in DDP keeps gradient sync on the real forward.
    """

    def __init__(self, model, chunk_rows: int = 512) -> None:
        super().__init__()
        self.model = model
        self.chunk_rows = chunk_rows
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._decoder = getattr(inner, inner.base_model_prefix)
        self._head = inner.get_output_embeddings()

    def hidden_at(self, input_ids, attention_mask, positions: torch.Tensor) -> torch.Tensor:
        """Final hidden states at the ``positions`` (a [batch, length] bool mask), in row-major order."""
        hidden = self._decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden[positions]

    def logits_at(self, input_ids, attention_mask, positions: torch.Tensor) -> torch.Tensor:
        """Next-token fp32 logits at the ``positions`` only, in row-major order.

        The output layer runs in the weights' own precision even under autocast: bf16 logits (3 significant
        digits) shift perplexities and flip argmax ties; the layers below keep the speed-up.
        """
        hidden = self.hidden_at(input_ids, attention_mask, positions)
        with torch.autocast(hidden.device.type, enabled=False):
            return self._head(hidden.to(self._head.weight.dtype)).float()

    def forward(self, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        positions = torch.nn.functional.pad(keep, (0, 1))  # position p predicts token p + 1
        hidden = self.hidden_at(input_ids, attention_mask, positions)
        gold = targets[keep]
        pad = -len(gold) % self.chunk_rows
        hidden = torch.cat([hidden, hidden.new_zeros(pad, hidden.shape[-1])])
        gold = torch.cat([gold, gold.new_full((pad,), IGNORE_INDEX)])
        loss = hidden.new_zeros((), dtype=torch.float32)
        for h, g in zip(hidden.split(self.chunk_rows), gold.split(self.chunk_rows)):
            loss = loss + nn.functional.cross_entropy(self._head(h).float(), g, ignore_index=IGNORE_INDEX,
                                                      reduction="sum")
        return loss, keep.sum()


# ---- the loop ----------------------------------------------------------------------------------------------------

@dataclass
class Schedule:
    """All micro-batches of the run, as a function of the step: nothing to store, nothing to skip."""

    datasets: dict[str, TokenizedDataset]
    config: TrainConfig
    world_size: int

    def __post_init__(self) -> None:
        self._epochs: dict[int, list[Batch]] = {}
        self.per_epoch = len(self._epoch(0))
        if self.per_epoch < self.config.gradient_accumulation_steps:
            need = self.config.batch_size * self.world_size * self.config.gradient_accumulation_steps
            raise ValueError(f"too little data: an optimizer step needs {need} examples per epoch")
        self.steps_per_epoch = self.per_epoch // self.config.gradient_accumulation_steps

    def total_steps(self) -> int:
        if self.config.max_steps:
            return self.config.max_steps
        return max(1, int(self.config.epochs * self.steps_per_epoch))

    def step(self, step: int) -> list[Batch]:
        accum = self.config.gradient_accumulation_steps
        epoch, offset = divmod(step, self.steps_per_epoch)
        return self._epoch(epoch)[offset * accum:(offset + 1) * accum]

    def _epoch(self, epoch: int) -> list[Batch]:
        if epoch not in self._epochs:
            self._epochs = {epoch: self._plan(epoch)}  # keep one epoch in memory
        return self._epochs[epoch]

    def _plan(self, epoch: int) -> list[Batch]:
        c = self.config
        global_batch = c.batch_size * self.world_size
        plan = lambda source, salt: plan_batches(  # noqa: E731
            self.datasets[source].lengths(), global_batch, c.seed + salt, epoch, source, c.pad_multiple, c.max_length)
        persona = plan("persona", 0)
        if "control" not in self.datasets or c.ctrl_ratio == 0:
            return persona
        n_ctrl = round(len(persona) * c.ctrl_ratio / (1 - c.ctrl_ratio))
        control: list[Batch] = []
        cycle = 0
        while len(control) < n_ctrl:  # cycle through the (usually smaller) control data, reshuffled each pass
            more = plan_batches(self.datasets["control"].lengths(), global_batch, c.seed + 7919 + cycle,
                                epoch, "control", c.pad_multiple, c.max_length)
            if not more:
                raise ValueError(f"too little action-code data for a batch of {global_batch}")
            control += more
            cycle += 1
        mixed = persona + control[:n_ctrl]
        random.Random(c.seed * 31 + epoch).shuffle(mixed)
        return mixed


def keep_freed_memory() -> bool:
    """Stop glibc from handing freed blocks back to the OS after every step.

    By default glibc serves big allocations with mmap and trims the heap top, so every training step pays page
    faults to get the same memory again (measured 1.3-1.7x slower here). Equivalent to running with
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge>``. Safe because batch shapes come from a few fixed
    widths; with arbitrary shapes the never-returned heap fragments and grows. Returns whether it applied.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False  # not glibc: nothing to tune
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


class _StopFlag:
    """First Ctrl-C: finish the current step, checkpoint, stop. Second: stop at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _StopFlag:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nStopping after this step (Ctrl-C again to abort without saving) ...", flush=True)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class RunResult:
    output_dir: Path
    step: int
    stats: list[dict]
    interrupted: bool = False
    main_process: bool = True


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> RunResult:
    """Run one phase. The final model goes to ``OUTPUT_DIR/model`` (a loadable checkpoint or adapter)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup, set_seed

    import transformers

    config.validate()
    transformers.utils.logging.disable_progress_bar()  # one progress bar: ours
    keep_freed_memory()
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(config.mixed_precision),
                              cpu=not torch.cuda.is_available())
    output_dir = Path(config.output_dir)
    checkpoint = latest_checkpoint(output_dir) if resume else None
    if resume and checkpoint is None and accelerator.is_main_process:
        print(f"No checkpoint in {output_dir} yet; starting from the beginning.")
    set_seed(config.seed)

    model, tokenizer = build_model(config, checkpoint or (Path(config.init_from) if config.init_from else None))
    fmt = PromptFormat(tokenizer)
    cache_dir = config.cache_dir or output_dir.parent / ".data-cache"
    show = progress and accelerator.is_main_process
    with accelerator.main_process_first():
        datasets = {"persona": prepare(config.data, fmt, config.max_length, "persona", cache_dir, show)}
        if config.phase == "train_loop":
            datasets["control"] = prepare(config.ctrl_data, fmt, config.max_length, "control", cache_dir, show)
        eval_set = (prepare([config.eval_data], fmt, config.max_length, "persona", cache_dir, show)
                    if config.eval_data else None)
    schedule = Schedule(datasets, config, accelerator.num_processes)
    total = schedule.total_steps()

    loss_module = TargetLoss(model)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, config.warmup_steps, total)
    loss_module, optimizer = accelerator.prepare(loss_module, optimizer)

    state = {"step": 0, "stats": []}
    if checkpoint is not None:
        state = _load_trainer_state(checkpoint, optimizer, scheduler, accelerator)
        if accelerator.is_main_process:
            print(f"Resuming from {checkpoint} (step {state['step']} of {total})")
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.json").write_text(json.dumps(asdict(config), indent=2))

    names = LOSS_NAMES[config.phase]
    window = _Window()
    bar = tqdm(total=total, initial=state["step"], desc=config.phase, unit="step", disable=not show, dynamic_ncols=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    interrupted = False
    loss_module.train()
    with _StopFlag() as stop:
        while state["step"] < total and not stop.requested:
            step = state["step"]
            micro = schedule.step(step)
            # every process knows the whole global batch, so the token count needs no communication
            step_targets = sum(datasets[b.source].num_targets(b.indices) for b in micro)
            started = time.perf_counter()
            for k, batch in enumerate(micro):
                mine = batch.indices[rank * config.batch_size:(rank + 1) * config.batch_size]
                inputs = {key: v.to(accelerator.device) for key, v in
                          collate(datasets[batch.source], mine, batch.width, tokenizer.pad_token_id).items()}
                last = k == len(micro) - 1  # gradients are all-reduced once per step, on the last micro-batch
                with nullcontext() if last else accelerator.no_sync(loss_module):
                    with accelerator.autocast():
                        loss_sum, n_targets = loss_module(**inputs)
                    accelerator.backward(loss_sum * world / step_targets)
                window.add(batch.source, loss_sum.detach(), n_targets, inputs["attention_mask"].sum())
            if config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(loss_module.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            window.elapsed += time.perf_counter() - started
            state["step"] = step + 1
            bar.update(1)

            if state["step"] % config.logging_steps == 0 or state["step"] == total:
                record = window.flush(accelerator, names, state["step"], scheduler.get_last_lr()[0],
                                      state["step"] / schedule.steps_per_epoch)
                state["stats"].append(record)
                bar.set_postfix({k: (f"{v:.2e}" if k == "lr" else f"{v:.3f}" if k.endswith("loss") else v)
                                 for k, v in record.items() if k.endswith("loss") or k in ("lr", "tgt_tok/s")})
            if eval_set is not None and config.eval_steps and state["step"] % config.eval_steps == 0:
                _log_eval(state, evaluate_loss(loss_module, eval_set, config, tokenizer, accelerator), accelerator)
            if state["step"] % config.save_steps == 0 and state["step"] < total:
                save_checkpoint(output_dir, accelerator, loss_module, tokenizer, optimizer, scheduler, state, config)
        interrupted = stop.requested and state["step"] < total
    bar.close()

    if interrupted:
        save_checkpoint(output_dir, accelerator, loss_module, tokenizer, optimizer, scheduler, state, config)
        if accelerator.is_main_process:
            print(f"Interrupted at step {state['step']}; continue with --resume.")
        return RunResult(output_dir, state["step"], state["stats"], True, accelerator.is_main_process)
    evaluated = any(r.get("step") == state["step"] and "eval_loss" in r for r in state["stats"])
    if eval_set is not None and not evaluated:
        _log_eval(state, evaluate_loss(loss_module, eval_set, config, tokenizer, accelerator), accelerator)
    save_checkpoint(output_dir, accelerator, loss_module, tokenizer, optimizer, scheduler, state, config)
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(loss_module).model, output_dir / "model")
        tokenizer.save_pretrained(output_dir / "model")
    accelerator.wait_for_everyone()
    return RunResult(output_dir, state["step"], state["stats"], False, accelerator.is_main_process)


class _Window:
    """Loss sums, target counts and token counts since the last log line, per data source."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}
        self.tokens = torch.zeros(())
        self.elapsed = 0.0

    def add(self, source: str, loss_sum: torch.Tensor, n_targets: torch.Tensor, n_tokens: torch.Tensor) -> None:
        self.sums[source] = self.sums.get(source, 0) + loss_sum.float().cpu()
        self.counts[source] = self.counts.get(source, 0) + n_targets.cpu()
        self.tokens = self.tokens + n_tokens.cpu()

    def flush(self, accelerator, names: dict[str, str], step: int, lr: float, epoch: float) -> dict:
        sources = list(names)
        local = torch.tensor([float(self.sums.get(s, 0)) for s in sources] +
                             [float(self.counts.get(s, 0)) for s in sources] + [float(self.tokens)],
                             device=accelerator.device)
        total = accelerator.reduce(local, reduction="sum").cpu()
        n = len(sources)
        record = {"step": step, "epoch": round(epoch, 4), "lr": lr}
        for i, source in enumerate(sources):
            if total[n + i] > 0:
                record[names[source]] = float(total[i] / total[n + i])
        targets = float(total[n:2 * n].sum())
        record["tgt_tok/s"] = round(targets / max(self.elapsed, 1e-9), 1)
        record["tok/s"] = round(float(total[-1]) / max(self.elapsed, 1e-9), 1)
        self.reset()
        return record


@torch.no_grad()
def evaluate_loss(loss_module, dataset: TokenizedDataset, config: TrainConfig, tokenizer, accelerator) -> float:
    """Mean loss per target token on (the first ``eval_limit`` examples of) ``dataset``."""
    n = len(dataset) if config.eval_limit is None else min(len(dataset), config.eval_limit)
    lengths = dataset.lengths()
    order = sorted(range(n), key=lambda i: lengths[i])
    rank, world = accelerator.process_index, accelerator.num_processes
    totals = torch.zeros(2, device=accelerator.device)
    was_training = loss_module.training
    loss_module.eval()
    for start in range(0, n, config.batch_size * world):
        mine = order[start:start + config.batch_size * world][rank::world]
        if not mine:
            continue
        longest = max(lengths[i] for i in mine)
        width = min(config.max_length, -(-longest // config.pad_multiple) * config.pad_multiple)
        inputs = {k: v.to(accelerator.device) for k, v in collate(dataset, mine, width, tokenizer.pad_token_id).items()}
        with accelerator.autocast():
            loss_sum, count = loss_module(**inputs)
        totals += torch.stack([loss_sum.float(), count.float()])
    loss_module.train(was_training)
    totals = accelerator.reduce(totals, reduction="sum")
    return float(totals[0] / totals[1])


def _log_eval(state: dict, loss: float, accelerator) -> None:
    state["stats"].append({"step": state["step"], "eval_loss": loss, "eval_ppl": math.exp(min(loss, 50))})
    if accelerator.is_main_process:
        print(f"step {state['step']}: validation loss {loss:.4f} (perplexity {math.exp(min(loss, 50)):.2f})")


def _param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() or "ln_" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---- checkpoints -------------------------------------------------------------------------------------------------

LATEST = "latest"


def save_checkpoint(output_dir: Path, accelerator, loss_module, tokenizer, optimizer, scheduler, state: dict,
                    config: TrainConfig) -> Path:
    """Write ``checkpoint-STEP`` atomically (temp dir + rename), then point ``latest`` at it.

    A run killed at any moment leaves ``latest`` naming a complete checkpoint.
    """
    final = output_dir / f"checkpoint-{state['step']}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = output_dir / f".tmp-checkpoint-{state['step']}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(accelerator.unwrap_model(loss_module).model, tmp)
        tokenizer.save_pretrained(tmp)
        torch.save({"step": state["step"], "stats": state["stats"], "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "rng": _rng_state(), "config": asdict(config)},
                   tmp / "trainer_state.pt")
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = output_dir / f".{LATEST}.tmp"
        pointer.write_text(final.name)
        os.replace(pointer, output_dir / LATEST)
        write_stats(output_dir, state["stats"])
        _rotate(output_dir, config.save_total_limit, keep=final.name)
    accelerator.wait_for_everyone()
    return final


def save_model(model, path: Path) -> None:
    """``save_pretrained``; for LoRA the adapter only (the new-token rows are part of it)."""
    if hasattr(model, "peft_config"):
        model.save_pretrained(path, save_embedding_layers=False)
    else:
        model.save_pretrained(path)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``latest`` names, or the newest complete one if the pointer is missing."""
    output_dir = Path(output_dir)
    pointer = output_dir / LATEST
    if pointer.is_file():
        path = output_dir / pointer.read_text().strip()
        if (path / "trainer_state.pt").is_file():
            return path
    complete = [p for p in output_dir.glob("checkpoint-*") if (p / "trainer_state.pt").is_file()]
    return max(complete, key=lambda p: int(p.name.split("-")[1]), default=None)


def _load_trainer_state(checkpoint: Path, optimizer, scheduler, accelerator) -> dict:
    saved = torch.load(checkpoint / "trainer_state.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    _set_rng_state(saved["rng"])
    return {"step": saved["step"], "stats": saved["stats"]}


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    for file in path.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())


def _rotate(output_dir: Path, limit: int, keep: str) -> None:
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for old in checkpoints[:-limit] if limit > 0 else []:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


# ---- stats and plots ---------------------------------------------------------------------------------------------

def write_stats(output_dir: Path, stats: list[dict]) -> None:
    """``stats.json``, ``stats.csv`` and ``samples/loss.png`` from the per-step records."""
    import csv

    (output_dir / "stats.json").write_text(json.dumps(stats, indent=1))
    columns = list(dict.fromkeys(k for record in stats for k in record))
    with open(output_dir / "stats.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(stats)
    plot_losses(stats, output_dir / "samples" / "loss.png")


def plot_losses(stats: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [k for k in dict.fromkeys(k for r in stats for k in r) if k.endswith("loss")]
    if not series:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in series:
        points = [(r["step"], r[name]) for r in stats if name in r]
        ax.plot(*zip(*points), label=name, marker="o" if name == "eval_loss" else None, markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per target token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)



def train_phases(config: TrainConfig, phases: str, resume: bool = False, progress: bool = True) -> RunResult:
    """``phases`` is ``pretrain``, ``train_loop`` or ``both`` (pretrain into OUTPUT/pretrain, then train_loop)."""
    from dataclasses import replace

    if phases != "both":
        return train(replace(config, phase=phases), resume=resume, progress=progress)
    out = Path(config.output_dir)
    first = out / "pretrain"
    if not (first / "model").is_dir():
        result = train(replace(config, phase="pretrain", output_dir=str(first)), resume=resume, progress=progress)
        if result.interrupted:
            return result
    return train(replace(config, phase="train_loop", init_from=str(first / "model")), resume=resume,
                 progress=progress)


# ---- learning from a person's corrections (active learning) ------------------------------------------------------

class OnlineLearner:
    """A few gradient steps per new example, mixed with replayed persona and control data so old skills stay.

    Used by ``personagpt teach --update``: each accepted or corrected turn is trained on at once.
    """

    def __init__(self, model, tokenizer, learning_rate: float = 1e-4, steps: int = 3, replay: int = 2,
                 replay_persona: TokenizedDataset | None = None, replay_control: TokenizedDataset | None = None,
                 max_length: int = 512, seed: int = 0) -> None:
        self.fmt = PromptFormat(tokenizer)
        self.model = model
        _make_trainable(model)
        self.loss = TargetLoss(model)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
        self.steps, self.replay, self.max_length = steps, replay, max_length
        self.pools = [d for d in (replay_persona, replay_control) if d is not None and len(d)]
        self.rng = random.Random(seed)
        self.updates = 0

    def learn(self, record) -> float:
        """Train on one ``ControlRecord``; returns its loss per target token before the update."""
        from personagpt.dataset import control_example

        example = control_example(record, self.fmt, self.max_length)
        new = TokenizedDataset.from_examples([example])
        before = record_loss(self.model, self.fmt, record, self.max_length)
        self.model.train()
        for _ in range(self.steps):
            batches = [(new, [0])]
            for _ in range(self.replay if self.pools else 0):
                pool = self.rng.choice(self.pools)
                batches.append((pool, [self.rng.randrange(len(pool))]))
            total_targets = sum(d.num_targets(i) for d, i in batches)
            for dataset, indices in batches:
                width = min(self.max_length, max(len(dataset[i][0]) for i in indices))
                inputs = collate(dataset, indices, width, self.fmt.tokenizer.pad_token_id)
                inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
                loss_sum, _ = self.loss(**inputs)
                (loss_sum / total_targets).backward()
            torch.nn.utils.clip_grad_norm_(self.loss.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.model.eval()
        self.updates += 1
        return before


def _make_trainable(model) -> None:
    """LoRA models loaded for inference have frozen adapters: unfreeze those (or everything for full models)."""
    names = [n for n, _ in model.named_parameters()]
    adapter = [n for n in names if "lora_" in n or "trainable_tokens" in n]
    for name, param in model.named_parameters():
        param.requires_grad = name in adapter if adapter else True


@torch.no_grad()
def record_loss(model, fmt: PromptFormat, record, max_length: int = 512) -> float:
    """Mean negative log-likelihood per token of ``record.response`` under its goal and history."""
    from personagpt.dataset import control_example

    dataset = TokenizedDataset.from_examples([control_example(record, fmt, max_length)])
    inputs = collate(dataset, [0], len(dataset[0][0]), fmt.tokenizer.pad_token_id)
    was_training = model.training
    model.eval()
    loss_sum, count = TargetLoss(model)(**{k: v.to(model.device) for k, v in inputs.items()})
    model.train(was_training)
    return float(loss_sum / count)
