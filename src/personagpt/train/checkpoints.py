"""Training checkpoints: atomic writes, the ``latest`` pointer, rotation, RNG state, stats files and loss plots.

A run killed at any moment leaves ``latest`` naming a complete checkpoint; ``--resume`` restores the optimizer,
scheduler, step, stats and every RNG, so the run goes on exactly as if it had never stopped.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from personagpt.models.load import save_model
from personagpt.plots import line_plot

LATEST = "latest"


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` through a temporary file: an interrupted write never leaves half a file at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
    return path


class ConfigModule:
    """``save``/``load`` for a small ``nn.Module`` that keeps its constructor arguments in ``self.config``."""

    def save(self, path: str | os.PathLike, **extra) -> Path:
        return atomic_torch_save({"config": self.config, "state": self.state_dict(), **extra}, path)

    @classmethod
    def load(cls, path: str | os.PathLike):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        module = cls(**saved["config"])
        module.load_state_dict(saved["state"])
        return module.eval()


def save_training_checkpoint(output_dir: Path, accelerator, loss_module, tokenizer, optimizer, scheduler,
                             state: dict, config) -> Path:
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
                    "scheduler": scheduler.state_dict(), "rng": rng_state(), "config": asdict(config)},
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


def load_trainer_state(checkpoint: Path, optimizer, scheduler) -> dict:
    """Restore optimizer, scheduler and RNGs from ``checkpoint``; returns its step and stats."""
    saved = torch.load(checkpoint / "trainer_state.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"])
    return {"step": saved["step"], "stats": saved["stats"]}


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
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


def write_stats(output_dir: Path, stats: list[dict]) -> None:
    """``stats.json``, ``stats.csv`` and ``samples/loss.png`` from the per-step records."""
    (output_dir / "stats.json").write_text(json.dumps(stats, indent=1))
    columns = list(dict.fromkeys(k for record in stats for k in record))
    with open(output_dir / "stats.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(stats)
    plot_losses(stats, output_dir / "samples" / "loss.png")


def plot_losses(stats: list[dict], path: Path) -> None:
    series = [k for k in dict.fromkeys(k for r in stats for k in r) if k.endswith("loss")]
    if not series:
        return

    def draw(ax) -> None:
        for name in series:
            points = [(r["step"], r[name]) for r in stats if name in r]
            ax.plot(*zip(*points), label=name, marker="o" if name == "eval_loss" else None, markersize=3)

    line_plot(path, "optimizer step", "loss per target token", draw)
