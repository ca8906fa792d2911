"""Training: ``pretrain`` (persona data) and ``train_loop`` (persona + action-code data), as in the original.

Batched with length buckets, gradient accumulation, AdamW with linear warmup/decay, clipping, bf16/fp16 autocast,
full fine-tuning or LoRA, checkpoints that are atomic and resumable to the exact step, and multi-process runs via
Accelerate (``accelerate launch`` or ``torchrun``). The whole data order is a pure function of (seed, step), so a
resumed or distributed run sees exactly the batches an uninterrupted single-process run would.
"""

from __future__ import annotations

import json
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, get_linear_schedule_with_warmup, set_seed

from personagpt.data.examples import Schedule, TokenizedDataset, collate, prepare
from personagpt.format import SPECIAL_TOKENS, PromptFormat, add_special_tokens
from personagpt.models.hardware import resolve_mixed_precision
from personagpt.models.heap import keep_freed_memory
from personagpt.models.load import (
    from_pretrained,
    load_tokenizer,
    peft_warnings_silenced,
    random_gpt2,
    resolve_model_name,
    save_model,
)
from personagpt.scoring import TargetLoss
from personagpt.train.checkpoints import latest_checkpoint, load_trainer_state, save_training_checkpoint
from personagpt.train.config import TrainConfig

# The loss names each phase logs, as in the original.
LOSS_NAMES = {"pretrain": {"persona": "pretrain_loss"}, "train_loop": {"persona": "persona_loss", "control": "ctrl_loss"}}


# ---- model -------------------------------------------------------------------------------------------------------

def build_model(config: TrainConfig, checkpoint: Path | None = None):
    """The model and tokenizer to train: the base (or a random GPT-2), optionally LoRA-wrapped.

    With ``checkpoint`` (a checkpoint of this run, or the output of an earlier phase) the weights come from
    there: the whole model, or for LoRA the adapter on top of the base.
    """

    if config.from_scratch:
        tokenizer = load_tokenizer(checkpoint or config.tokenizer)
        if checkpoint:
            model = from_pretrained(AutoModelForCausalLM, str(checkpoint))
        else:
            model = random_gpt2(config.from_scratch, tokenizer, n_positions=max(1024, config.max_length),
                                seed=config.seed)
    elif config.lora:
        from peft import LoraConfig, PeftModel, get_peft_model  # start-up: peft takes ~1 s to import; LoRA runs only

        base_path = resolve_model_name(config.model)
        tokenizer = load_tokenizer(checkpoint or base_path)
        base = from_pretrained(AutoModelForCausalLM, base_path)
        add_special_tokens(tokenizer, base)
        with peft_warnings_silenced():
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
        model = from_pretrained(AutoModelForCausalLM, source)
    add_special_tokens(tokenizer, model)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# ---- the loop ----------------------------------------------------------------------------------------------------

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
    # start-up: accelerate takes ~1 s to import, and only a training run needs it
    from accelerate import Accelerator

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
        state = load_trainer_state(checkpoint, optimizer, scheduler)
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
                save_training_checkpoint(output_dir, accelerator, loss_module, tokenizer, optimizer, scheduler, state, config)
        interrupted = stop.requested and state["step"] < total
    bar.close()

    if interrupted:
        save_training_checkpoint(output_dir, accelerator, loss_module, tokenizer, optimizer, scheduler, state, config)
        if accelerator.is_main_process:
            print(f"Interrupted at step {state['step']}; checkpoint saved in {output_dir}.")
        return RunResult(output_dir, state["step"], state["stats"], True, accelerator.is_main_process)
    evaluated = any(r.get("step") == state["step"] and "eval_loss" in r for r in state["stats"])
    if eval_set is not None and not evaluated:
        _log_eval(state, evaluate_loss(loss_module, eval_set, config, tokenizer, accelerator), accelerator)
    save_training_checkpoint(output_dir, accelerator, loss_module, tokenizer, optimizer, scheduler, state, config)
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


def train_phases(config: TrainConfig, phases: str, resume: bool = False, progress: bool = True) -> RunResult:
    """``phases`` is ``pretrain``, ``train_loop`` or ``both`` (pretrain into OUTPUT/pretrain, then train_loop)."""
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

