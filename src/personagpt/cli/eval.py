"""``personagpt eval``: one comparison row per model on a Persona-Chat split."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from personagpt.cli.common import UserError, friendly_errors, load
from personagpt.cli.options import DeviceOpt

METRIC_GROUPS = ("ppl", "f1", "hits", "control")


def evaluate_models(
    model: Annotated[Optional[list[str]], typer.Option("--model", help="Model to evaluate (repeatable): checkpoint or adapter dir, hub id, smollm2-135m, or random:LAYERSxWIDTH for a random GPT-2 floor. Default: the bundled model.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="ConvAI2-format split (default: the Persona-Chat validation split).")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Evaluate only the first N dialogues (quick runs).")] = None,
    decode: Annotated[str, typer.Option(help="Decoding for F1 and distinct-n: greedy, sample or beam.")] = "greedy",
    metrics: Annotated[str, typer.Option(help="Comma-separated groups: ppl (perplexities, tf-F1), f1 (generation: F1, distinct-n), hits (persona identification), control (control success rate and its no-action base rate).")] = ",".join(METRIC_GROUPS),
    distractors: Annotated[int, typer.Option(min=1, help="Distractor personas for Hits@1 (drawn from the whole split, even with --limit).")] = 19,
    hits_limit: Annotated[Optional[int], typer.Option(min=1, help="Rank personas for the first N dialogues only (one batched pass over 1 + --distractors candidates per conversation).")] = None,
    control_contexts: Annotated[int, typer.Option(min=1, help="Contexts (x 11 goals) for the control success rate.")] = 50,
    candidates: Annotated[int, typer.Option("--candidates", min=1, help="Generate F1's and control's replies best-of-N (sample N, keep the best scored; with --decode greedy or sample).")] = 1,
    batch_size: Annotated[int, typer.Option(min=1, help="Conversations scored or generated together (more is "
                                                     "faster and uses more memory).")] = 8,
    tokenizer: Annotated[Optional[Path], typer.Option(help="Tokenizer for random:... models (default: the shared GPT-2 BPE files).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write all results as JSON here.")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the table as Markdown.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for distractors, control contexts, sampling.")] = 0,
    precision: Annotated[str, typer.Option(help="Matmul precision: auto (bf16 where the hardware is fast at it: 3-4x faster on an AMX CPU, perplexities within 0.1%), no (fp32), bf16 or fp16.")] = "auto",
    device: DeviceOpt = None,
) -> None:
    """Evaluate models on a Persona-Chat split and print one comparison row per model.

    Reports response perplexity per token, per word and as the original computed it, the original's teacher-forced token F1 (tf-F1), ConvAI2 word F1 of generated replies, distinct-1/2, persona identification Hits@1 (per response and per conversation, chance 5%) and the control success rate against its no-action base rate (contexts drawn from the evaluated dialogues). A model that fails to load gets an error row; the others still run (exit status 2 if none loads).
    """
    with friendly_errors():
        from transformers import set_seed

        from personagpt.data.dialogues import default_data_dir, load_dialogues
        from personagpt.eval.evaluate import evaluate, markdown_table
        from personagpt.models.load import ModelNotFoundError
        from personagpt.models.hardware import describe_hardware

        if precision not in ("auto", "no", "bf16", "fp16"):
            raise UserError("--precision must be auto, no, bf16 or fp16")
        groups = [m.strip() for m in metrics.split(",") if m.strip()]
        unknown = set(groups) - set(METRIC_GROUPS)
        if unknown or not groups:
            raise UserError(f"unknown metric group(s) {', '.join(sorted(unknown)) or '(none)'}; "
                            f"use {', '.join(METRIC_GROUPS)}")
        split = data or default_data_dir() / "personachat" / "valid_both_original_no_cands.txt"
        everything = load_dialogues(split)
        dialogues = everything[:limit]
        rows = []

        def save() -> None:  # after every model, so an interrupted run keeps the rows it finished
            if out is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps({"data": str(split), "dialogues": len(dialogues), "decode": decode,
                                           "rows": rows}, indent=1))

        for name in model or [None]:
            label = name or "bundled"
            try:
                loaded, fmt = load(name, device, tokenizer=tokenizer)
            except (ModelNotFoundError, ValueError, OSError) as e:
                typer.echo(f"Error: {label}: {e}", err=True)
                rows.append({"model": label, "error": str(e)})
                save()
                continue
            set_seed(seed)
            typer.echo(f"Evaluating {label} on {len(dialogues)} dialogues of {split} ...", err=True)
            row = evaluate(loaded, fmt, dialogues, decode=decode, distractors=distractors, batch_size=batch_size,
                           seed=seed, metrics=groups, control_contexts=control_contexts, precision=precision,
                           hits_dialogues=hits_limit, distractor_pool=everything, candidates=candidates)
            if "distractors" in row and row["distractors"] < distractors:
                typer.echo(f"Note: only {row['distractors']} distractor personas were available in {split}; "
                           "Hits@1 ranks against those.", err=True)
            row["hardware"] = describe_hardware()
            typer.echo(f"Precision {row['precision']} (--precision {precision}) on {row['hardware']}. A seeded "
                       "evaluation repeats exactly on the same machine and precision; bf16 and fp32, or two CPUs "
                       "with different matmul kernels, differ in the last digits.", err=True)
            rows.append({"model": label, **row})
            del loaded
            save()
        if all("error" in r for r in rows):  # nothing to tabulate; the errors are printed above
            raise typer.Exit(2)
        if markdown:
            typer.echo(markdown_table(rows))
        else:
            print_table(rows)


def print_table(rows: list[dict]) -> None:
    """The comparison table in the terminal; piped or redirected, every cell in full (no truncation)."""
    from rich.console import Console
    from rich.table import Table

    from personagpt.eval.evaluate import table_rows

    header, cells = table_rows(rows)
    table = Table(*header)
    for row in cells:
        table.add_row(*row)
    console = Console() if sys.stdout.isatty() else Console(width=10_000, soft_wrap=True)
    console.print(table)
