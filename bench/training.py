"""Training throughput: our trainer against a faithful re-implementation of the original PersonaGPT loop.

Same model (a random 6-layer / 384-wide GPT-2 on the GPT-2 vocabulary, same initial weights), same dialogues
(the first N of the shared training file), one pass over them, so both see the same target turns.

* original: one example per target turn, batch size 1: a forward pass over ``persona + history so far`` (with
  gradients, as the original ``fit_on_batch`` does), then the turn with that cache and ``labels=turn``;
  gradient accumulation over 8 examples; fp32 (the original's default);
* ours: ``personagpt.train.loop.train``: one sequence per (dialogue, speaker), loss on that speaker's turns,
  length-bucketed batches of 8, bf16 autocast where the CPU supports it.

Each side runs in its own process so peak memory (max RSS) is its own.

    python bench/training.py [--dialogues 240]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TRAIN_FILE = SHARED / "personachat" / "train_self_partial_no_cands.txt"


def slice_dialogues(n: int, out: Path) -> Path:
    """The first ``n`` episodes of the training file."""
    lines, episodes = [], 0
    for line in TRAIN_FILE.read_text().splitlines(keepends=True):
        if line.startswith("1 "):
            episodes += 1
            if episodes > n:
                break
        lines.append(line)
    out.write_text("".join(lines))
    return out


def run_original(data: Path, accumulation: int = 8, lr: float = 5e-5) -> dict:
    from transformers import get_linear_schedule_with_warmup

    from personagpt.data.dialogues import load_dialogues
    from personagpt.format import PromptFormat
    from personagpt.models.load import build_gpt2, load_tokenizer

    tokenizer = load_tokenizer(SHARED / "tokenizer" / "gpt2")
    fmt = PromptFormat(tokenizer)
    model = build_gpt2(tokenizer, n_layer=6, n_embd=384, n_head=6, seed=0).train()
    examples = []  # (x, y): context ids, turn ids
    for dialogue in load_dialogues(data):
        turns = [fmt.utterance(t) for t in dialogue.turns]
        for speaker in (1, 2):
            if dialogue.facts(speaker):
                prefix = fmt.persona_prefix(dialogue.facts(speaker), speaker)
                for t, turn in enumerate(turns):
                    if dialogue.speaker_of(t) == speaker:
                        examples.append((prefix + [i for prev in turns[:t] for i in prev], turn))
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(examples), generator=g).tolist()
    no_decay = ("bias", "ln_")
    groups = [{"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)]},
              {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
               "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, eps=1e-8)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, len(examples) // accumulation)
    targets, start = 0, time.perf_counter()
    for step, i in enumerate(order):
        x, y = examples[i]
        xx, yy = torch.tensor([x]), torch.tensor([y])
        past = model(xx, use_cache=True).past_key_values  # with gradients, as in fit_on_batch
        loss = model(yy, past_key_values=past, labels=yy).loss / accumulation
        loss.backward()
        targets += len(y) - 1  # labels=yy: the turn's first token is not predicted
        if (step + 1) % accumulation == 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            model.zero_grad()
    elapsed = time.perf_counter() - start
    return {"examples": len(examples), "target_tokens": targets, "seconds": elapsed}


def run_ours(data: Path, workdir: Path) -> dict:
    from personagpt.data.examples import prepare
    from personagpt.format import PromptFormat
    from personagpt.models.load import load_tokenizer
    from personagpt.models.hardware import resolve_mixed_precision
    from personagpt.train.config import TrainConfig
    from personagpt.train.loop import train

    config = TrainConfig(from_scratch="6x384", tokenizer=str(SHARED / "tokenizer" / "gpt2"), data=[str(data)],
                         output_dir=str(workdir / "ours"), epochs=1, batch_size=8, learning_rate=5e-5,
                         logging_steps=5, save_steps=10**9, seed=0, cache_dir=str(workdir / "cache"))
    fmt = PromptFormat(load_tokenizer(config.tokenizer))
    dataset = prepare(config.data, fmt, config.max_length, cache_dir=config.cache_dir, progress=False)  # warm cache
    start = time.perf_counter()
    result = train(config, progress=False)
    elapsed = time.perf_counter() - start
    trained = result.step * config.batch_size  # full batches only; the remainder is dropped
    lengths = dataset.lengths()
    return {"examples": len(dataset), "sequences_trained": trained, "target_tokens_per_epoch": dataset.num_targets(),
            "target_tokens": round(dataset.num_targets() * trained / len(dataset)),
            "tokens": round(sum(lengths) * trained / len(dataset)), "seconds": elapsed,
            "steps": result.step, "mixed_precision": resolve_mixed_precision(config.mixed_precision)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dialogues", type=int, default=240, help="training dialogues to use (the original side takes ~7 min at 240)")
    parser.add_argument("--only", choices=["original", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.only:  # child process: one side, report JSON with its own peak memory
        import transformers

        transformers.logging.set_verbosity_error()
        data = args.workdir / "data.txt"
        result = run_original(data) if args.only == "original" else run_ours(data, args.workdir)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        slice_dialogues(args.dialogues, workdir / "data.txt")
        results = {}
        for side in ("ours", "original"):
            out = subprocess.run([sys.executable, __file__, "--only", side, "--workdir", str(workdir)],
                                 check=True, capture_output=True, text=True).stdout
            results[side] = json.loads(out.strip().splitlines()[-1])
    o, n = results["original"], results["ours"]
    rate_o, rate_n = o["target_tokens"] / o["seconds"], n["target_tokens"] / n["seconds"]
    print(f"{args.dialogues} training dialogues, GPT-2 6x384 (random init), torch threads {torch.get_num_threads()}")
    print("| trainer | examples | target tokens | seconds | target tokens/s | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| original loop (batch 1, fp32) | {o['examples']} | {o['target_tokens']} | {o['seconds']:.1f} | "
          f"{rate_o:.0f} | {o['peak_rss_mb']:.0f} |")
    print(f"| ours (batch 8, {n['mixed_precision']}) | {n['sequences_trained']} of {n['examples']} | "
          f"{n['target_tokens']} | {n['seconds']:.1f} | {rate_n:.0f} | {n['peak_rss_mb']:.0f} |")
    print(f"\nspeed-up in target tokens/s: {rate_n / rate_o:.2f}x (target >= 4x)")


if __name__ == "__main__":
    main()
