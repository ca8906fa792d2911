"""Training commands: ``prepare`` (tokenize and cache), ``build-control-data`` (action-code data), ``train``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from personagpt.cli.common import UserError, friendly_errors, load, parse_action, quiet_libraries
from personagpt.cli.options import (DeviceOpt, ModelOpt, SeedOpt, adds_options, config_options,
                                    sampling_options)
from personagpt.train.config import TrainConfig
from personagpt.format import DEFAULT_ACTIONS, HISTORY_TURNS, MAX_SEQUENCE_LENGTH
from personagpt.generate.sampling import DEFAULT_CANDIDATES, SamplingConfig


def prepare(
    data: Annotated[list[Path], typer.Option("--data", help="ConvAI2 text or JSONL file (repeatable).")],
    model: Annotated[Optional[str], typer.Option(
        "--model", help="Model or tokenizer whose tokenizer to use (hub id or directory).")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(help="Tokenizer directory (instead of --model).")] = None,
    kind: Annotated[str, typer.Option(help="persona: dialogues; control: action-code JSONL.")] = "persona",
    max_length: Annotated[int, typer.Option("--max-length", min=16, help="Longest training sequence.")] = MAX_SEQUENCE_LENGTH,
    cache_dir: Annotated[Path, typer.Option(help="Where the tokenized dataset is cached.")] = Path("runs/.data-cache"),
) -> None:
    """Tokenize training data into a cached dataset (re-used while inputs and tokenizer are unchanged).

    One sequence per (dialogue, speaker with known facts), loss on that speaker's turns only. `personagpt train` prepares its data itself with the same cache, so this is optional: use it to check data and see its size.
    """
    with friendly_errors():
        from personagpt.data.examples import prepare as prepare_data
        from personagpt.format import PromptFormat
        from personagpt.models.load import load_tokenizer

        if bool(model) == bool(tokenizer):
            raise UserError("give exactly one of --model and --tokenizer")
        quiet_libraries()
        fmt = PromptFormat(load_tokenizer(model or tokenizer))
        dataset = prepare_data(data, fmt, max_length, kind, cache_dir)
        lengths = dataset.lengths()
        typer.echo(f"{len(dataset)} sequences, {sum(lengths)} tokens, {dataset.num_targets()} target tokens, "
                   f"longest {max(lengths)}; cached under {cache_dir}")


def _settings(values: dict) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def saved_run_settings(run_dir: Path) -> dict:
    """The settings a run in ``run_dir`` saved (its ``config.json``, or its pretrain phase's), less what belongs to
    one phase; empty when it saved none."""
    for path in (run_dir / "config.json", run_dir / "pretrain" / "config.json"):
        if path.is_file():
            saved = json.loads(path.read_text())
            return {k: v for k, v in saved.items() if k not in ("phase", "output_dir", "init_from")}
    return {}


@adds_options(config_options(TrainConfig), _settings, "flags")
def train(
    phase: Annotated[str, typer.Option(help="pretrain (persona data), train_loop (persona + action-code data) or both.")] = "pretrain",
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="Settings file: .json, .toml, or .env with the original's keys (save_path, data_path, epochs, learn_rate, gradient_accumulation_steps, batch_size, weight_decay, logging_steps, save_steps). Flags override it. Without it, ./.env is read when present.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help=(
        "Continue from the run's latest checkpoint. `--resume --output-dir DIR` alone is enough: the run's saved "
        "settings are used, and flags given override them."))] = False,
    flags: dict = None,
) -> None:
    """Fine-tune a causal LM into a PersonaGPT model.

    pretrain trains on persona dialogues (logs pretrain_loss); train_loop mixes in action-code data (logs persona_loss and ctrl_loss); both runs them in turn. Checkpoints are written every --save-steps and on Ctrl-C; --resume continues exactly where a stopped or killed run left off. Runs on several GPUs or machines with `accelerate launch -m personagpt.cli train ...` or `torchrun`.
    """
    with friendly_errors():
        from personagpt.train.config import expand_data_paths, read_config_file
        from personagpt.train.loop import train_phases

        if phase not in ("pretrain", "train_loop", "both"):
            raise UserError("--phase must be pretrain, train_loop or both")
        settings = {}
        config_path = config or (Path(".env") if Path(".env").is_file() else None)
        if config_path is not None:
            settings.update(read_config_file(config_path))
            typer.echo(f"Settings from {config_path}", err=True)
        settings.update(flags)
        run_dir = Path(settings.get("output_dir") or TrainConfig.output_dir)
        if resume:  # the run's saved settings come first: `--resume --output-dir DIR` alone continues it
            settings = saved_run_settings(run_dir) | settings
        if "data" in settings:
            settings["data"] = expand_data_paths(settings["data"])
        quiet_libraries()
        result = train_phases(TrainConfig(**settings), phase, resume=resume)
        if result.interrupted:
            if result.main_process:
                typer.echo(f"Continue with: personagpt train --phase {phase} --resume --output-dir {run_dir}",
                           err=True)
            raise typer.Exit(130)
        if result.main_process:
            typer.echo(f"Done: {result.step} steps. Model in {result.output_dir / 'model'}, "
                       f"loss curves in {result.output_dir / 'samples' / 'loss.png'}")


def build_control_data(
    data: Annotated[list[Path], typer.Option("--data", help="Dialogues to mine (ConvAI2 text or JSONL; repeatable). Never the validation split.")],
    out: Annotated[Path, typer.Option("--out", help="Output JSONL of {goal, facts, history, response}.")],
    goals: Annotated[Optional[list[str]], typer.Option("--goal", help="Goals to label (repeatable; default: the 11 default goals).")] = None,
    per_goal: Annotated[int, typer.Option(min=1, help="Keep at most this many examples per goal (balance).")] = 500,
    history_turns: Annotated[int, typer.Option(min=0, help="Turns of history kept before each response.")] = HISTORY_TURNS,
    semantic: Annotated[bool, typer.Option("--semantic/--rules-only", help="Use the sentence-embedding model as well as the rules.")] = True,
    seed: Annotated[int, typer.Option(help="Seed for sampling and for including facts.")] = 0,
) -> None:
    """Build action-code training data: label every turn of the dialogues with the goals it fulfils.

    Prints the number of examples found and kept per goal. The output is what `train --phase train_loop --ctrl-data` mixes in.
    """
    with friendly_errors():
        from personagpt.control.goals import GoalLabeler, build_control_records
        from personagpt.data.dialogues import load_dialogues

        quiet_libraries()
        dialogues = [d for path in data for d in load_dialogues(path)]
        goal_list = [parse_action(g) for g in goals] if goals else list(DEFAULT_ACTIONS)
        records, counts = build_control_records(dialogues, GoalLabeler(semantic=semantic), goal_list, per_goal,
                                                history_turns, seed=seed)
        write_records(records, out)
        typer.echo("| goal | found | kept |\n|---|---:|---:|")
        for goal, c in counts.items():
            typer.echo(f"| {goal} | {c['found']} | {c['kept']} |")
        typer.echo(f"{len(records)} examples written to {out}")


@sampling_options
def build_selftrain_data(
    data: Annotated[list[Path], typer.Option("--data", help="Dialogues whose contexts are continued (ConvAI2 text or JSONL; repeatable). Never the validation split.")],
    base: Annotated[Path, typer.Option("--base", help="The control data to extend (from build-control-data).")],
    out: Annotated[Path, typer.Option("--out", help="Output JSONL: the base examples plus the kept generated turns.")],
    goals: Annotated[list[str], typer.Option("--goal", help="A weak goal to generate turns for: an action index 0-10 or free text (repeatable).")],
    log: Annotated[Path, typer.Option("--log", help="Every attempt is appended here as it is made; a rerun with the same log resumes.")] = Path("runs/selftrain-attempts.jsonl"),
    model: ModelOpt = None,
    per_goal: Annotated[int, typer.Option(min=1, help="Stop a goal once this many generated turns are kept.")] = 150,
    max_attempts: Annotated[Optional[int], typer.Option(min=1, help="Give up on a goal after this many attempts (default 20x --per-goal).")] = None,
    cap: Annotated[int, typer.Option(min=1, help="A goal's examples after merging: base ones are all kept, generated ones only fill up to this.")] = 500,
    parallel: Annotated[int, typer.Option(min=1, max=64, help="Contexts generated at once, batched in one engine's steps (1: one at a time, no engine).")] = 8,
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
    sampling: SamplingConfig = None,
) -> None:
    """Self-training data for weak goals: the model's own best-of-N steered turns that the labeler accepts.

    For each --goal, training contexts are continued in goal mode with --candidates N (default 8 here, chosen
    among whole replies); a reply is kept when the labeler accepts it for that goal and for no other goal, and it
    is not a copy of one already kept. The kept turns are added to --base, capped per goal (--cap), and written to --out for
    `train --phase train_loop --ctrl-data`. Ctrl-C stops cleanly; rerunning with the same --log continues.
    """
    with friendly_errors():
        from dataclasses import replace

        from personagpt.data.dialogues import load_control_records, load_dialogues
        from personagpt.models.precision import serving_model
        from personagpt.control.selftrain import harvest, merge_control_records, read_attempts

        goal_list = list(dict.fromkeys(parse_action(g) for g in goals))
        base_records = load_control_records(base)
        dialogues = [d for path in data for d in load_dialogues(path)]
        if sampling.num_candidates == DEFAULT_CANDIDATES:
            sampling = replace(sampling, num_candidates=8)
        sampling = replace(sampling, commit_tokens=0)  # offline: the labeler judges whole candidates
        loaded, fmt = load(model, device)
        # prepared once: the engine's llama.cpp backend (if any) gets its GGUF export only when an engine runs
        served = serving_model(loaded, fmt=fmt if parallel > 1 else None)
        engine = None
        if parallel > 1:
            from personagpt.generate.engine import Engine

            rows = parallel * sampling.num_candidates * 2  # each candidate may take a guide row beside it
            engine = Engine(served, fmt, max_batch=rows, max_queue=rows)
            typer.echo(f"Decoding: {engine.describe()}", err=True)
        try:
            counts = harvest(served, fmt, dialogues, goal_list, log, per_goal=per_goal,
                             max_attempts=max_attempts, candidates=sampling.num_candidates, sampling=sampling,
                             seed=seed, engine=engine, parallel=parallel)
        finally:
            if engine is not None:
                engine.close()
        kept = [a.record() for a in read_attempts(log) if a.verdict == "kept" and a.goal in goal_list]
        records, merged = merge_control_records(base_records, kept, cap, seed=seed)
        write_records(records, out)
        typer.echo("| goal | attempts | kept | rejected | duplicate | base | added |\n|---|---:|---:|---:|---:|---:|---:|")
        for goal in goal_list:
            c, m = counts[goal], merged.get(goal, {"base": 0, "added": 0})
            typer.echo(f"| {goal} | {sum(c.values())} | {c['kept']} | {c['rejected']} | {c['duplicate']} | "
                       f"{m['base']} | {m['added']} |")
        typer.echo(f"{len(records)} examples written to {out}")


def write_records(records, out: Path) -> None:
    """Control records as JSONL, written to a temporary file and renamed (never a half-written file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record.to_json()) + "\n")
    tmp.replace(out)
