"""``personagpt selfplay``: an action-driven interviewer talks with a persona agent."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Annotated, Optional

import typer

from personagpt.cli.common import friendly_errors, load, parse_action, persona_from_flags, say_decoding
from personagpt.cli.options import (DeviceOpt, MaxLenOpt, ModelOpt, PersonaFileOpt, PersonaOpt, PersonasPathOpt,
                                    SeedOpt, TurnsOpt, sampling_options)
from personagpt.format import DEFAULT_CONTEXT
from personagpt.generate.sampling import SamplingConfig
from personagpt.text import for_people


@sampling_options
def selfplay(
    model: ModelOpt = None,
    num_turns: TurnsOpt = 8,
    num_convos: Annotated[int, typer.Option("--num-convos", min=1, help="Conversations to run side by side.")] = 1,
    actions: Annotated[Optional[list[str]], typer.Option(
        "--actions", help="Interviewer goal per turn, cycled: an action index 0-10 or free text (repeatable). "
                          "Default: a random default goal each turn.")] = None,
    persona: PersonaOpt = None,
    persona_file: PersonaFileOpt = None,
    personas_path: PersonasPathOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the transcripts as JSONL here.")] = None,
    max_length: MaxLenOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    sampling: SamplingConfig = None,
) -> None:
    """Let an interviewer agent, driven by action codes, talk with a persona agent.

    The persona agent gets --persona / --persona-file facts, or a random persona per conversation. Prints a
    Role | Action | Response table per conversation; --out saves them as JSONL (loadable as training data).
    """
    with friendly_errors():
        from personagpt.data.dialogues import load_personas, resolve_personas_path
        from personagpt.generate.engine import Engine
        from personagpt.models.load import context_limit
        from personagpt.models.precision import serving_model
        from personagpt.control.selfplay import FixedPolicy, RandomPolicy, self_play

        rng = random.Random(seed)
        goals = [parse_action(a) for a in actions] if actions else None
        fixed = persona_from_flags(persona, persona_file, False, None, rng)
        if fixed is not None:
            personas = [fixed] * num_convos
        else:
            pool = load_personas(resolve_personas_path(personas_path))
            personas = [rng.choice(pool) for _ in range(num_convos)]
        loaded, fmt = load(model, device)
        say_decoding(loaded, sampling=sampling)
        policy = FixedPolicy(goals) if goals else RandomPolicy(seed=seed)
        # the conversations run side by side on one engine: their decoding steps are batched, and each turn
        # reuses the keys/values of the conversation so far
        # best-of-N: each turn's N candidates are rows of the batch, each with a guide row beside it (guidance, or
        # the reference its scores are taken against)
        candidates = sampling.most_candidates  # the interviewer's turns pursue goals
        rows = num_convos * candidates * (2 if sampling.guided or candidates > 1 else 1)
        engine = Engine(serving_model(loaded, fmt=fmt), fmt, max_batch=rows, max_queue=rows,
                        capacity=max_length or min(DEFAULT_CONTEXT, context_limit(loaded)))
        for index, facts in enumerate(personas):  # in order: the conversations then run side by side
            typer.echo(f"Conversation {index + 1}/{num_convos} — persona: {' '.join(facts)}", err=True)
        try:
            transcripts = self_play(loaded, fmt, personas, policy, num_turns, sampling, seed=seed,
                                    on_turn=show_turn(num_convos, num_turns), engine=engine)
        finally:
            engine.close()
        print_transcripts(transcripts)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "w", encoding="utf-8") as f:
                for t in transcripts:
                    f.write(json.dumps(t.to_json()) + "\n")
            typer.echo(f"Wrote {len(transcripts)} transcript(s) to {out}", err=True)


def show_turn(num_convos: int, num_turns: int):
    """Progress on stderr: each turn as it is produced (the tables on stdout come at the end)."""

    def show(index: int, transcript) -> None:
        turn = (len(transcript.turns) + 1) // 2
        action = transcript.actions[-1]
        who = f"Interviewer [{action}]" if action else "PersonaGPT"
        where = f"[{index + 1}] " if num_convos > 1 else ""
        typer.echo(f"  {where}{turn}/{num_turns} {who}: {for_people(transcript.turns[-1])}", err=True)

    return show


def print_transcripts(transcripts) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for n, t in enumerate(transcripts, 1):
        table = Table(title=f"Conversation {n} — persona: {' '.join(t.p2_facts)}", show_lines=False)
        for column in ("Role", "Action", "Response"):
            table.add_column(column, overflow="fold")
        for text, action in zip(t.turns, t.actions):
            table.add_row("Interviewer" if action else "PersonaGPT", action or "-", for_people(text))
        console.print(table)
