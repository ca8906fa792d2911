"""``personagpt auth ...``: persona authentication (an interviewer finds out who it is talking to)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from personagpt.cli.common import UserError, friendly_errors, load
from personagpt.cli.options import DeviceOpt, ModelOpt

app = typer.Typer(help="Persona authentication: interviews that identify who the partner is.", no_args_is_help=True)


@app.command("eval")
def evaluate(
    model: ModelOpt = None,
    policy: Annotated[Optional[list[str]], typer.Option("--policy", help="random, round-robin or no-goal "
                                                                         "(repeatable; default: all three).")] = None,
    conversations: Annotated[int, typer.Option(min=1, help="Interviews per policy (the issue's measure: >= 300).")] = 300,
    turns: Annotated[int, typer.Option(min=1, help="Exchanges per interview.")] = 8,
    candidates: Annotated[int, typer.Option("-k", "--candidates", min=2, help="Candidate personas (true + distractors).")] = 20,
    data: Annotated[Optional[Path], typer.Option(help="Held-out dialogues whose personas are interviewed "
                                                      "(default: the Persona-Chat validation split).")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Longest turn.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed for personas, distractors and sampling.")] = 0,
    out: Annotated[Path, typer.Option(help="Directory for results.json and hits_by_turn.png.")] = Path("runs/auth"),
    workers: Annotated[int, typer.Option(min=1, help="Interviews run side by side (each holds K candidates' "
                                                     "keys/values: about 0.25 GB with the bundled model).")] = 4,
    device: DeviceOpt = None,
) -> None:
    """Interview held-out personas with each policy; print Hits@1 of K after every turn (95% intervals) and plot it.

    The partner is the model with a validation persona; the identifier ranks the true persona and K - 1
    distractors (other validation personas) by the likelihood of the partner's turns.
    """
    with friendly_errors():
        import random

        from tqdm.auto import tqdm

        from personagpt.auth.env import candidate_sets, run_interviews
        from personagpt.auth.measure import hits_by_turn, markdown_table, plot
        from personagpt.auth.policies import baseline_policies
        from personagpt.data import default_data_dir, distinct_personas, load_dialogues
        from personagpt.engine import Engine
        from personagpt.models import serving_model
        from personagpt.sampling import SamplingConfig

        policies = baseline_policies(seed)
        names = policy or list(policies)
        unknown = [n for n in names if n not in policies]
        if unknown:
            raise UserError(f"unknown policy {', '.join(unknown)}; use {', '.join(policies)}")
        split = data or default_data_dir() / "personachat" / "valid_both_original_no_cands.txt"
        pool = distinct_personas(f for d in load_dialogues(split) for f in (d.p1_facts, d.p2_facts))
        if conversations > len(pool):
            raise UserError(f"{split} has {len(pool)} personas; ask for at most that many --conversations")
        truths = random.Random(seed).sample(pool, conversations)
        sets = candidate_sets(truths, pool, candidates, seed)
        loaded, fmt = load(model, device)
        engine = Engine(serving_model(loaded), fmt, max_batch=16, max_queue=conversations * 4)
        sampling = SamplingConfig(max_new_tokens=max_new_tokens)
        results = {}
        try:
            for name in names:
                bar = tqdm(total=conversations, desc=name, unit="interview")
                episodes = run_interviews(loaded, fmt, sets, policies[name], turns, sampling, seed, engine,
                                          workers=workers, on_episode=lambda _: bar.update(1))
                bar.close()
                results[name] = {"by_turn": hits_by_turn(episodes), "episodes": [
                    {"truth": e.truth, "ranks": e.ranks, "transcript": e.transcript.to_json()} for e in episodes]}
        finally:
            engine.close()
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"conversations": conversations, "k": candidates,
                                                      "turns": turns, "results": results}, indent=1))
        png = plot({n: r["by_turn"] for n, r in results.items()}, out / "hits_by_turn.png", 1 / candidates)
        typer.echo(f"Hits@1 of {candidates} (%) after each turn, {conversations} interviews, 95% intervals:")
        typer.echo(markdown_table({name: r["by_turn"] for name, r in results.items()}))
        typer.echo(f"Wrote {out / 'results.json'} and {png}", err=True)
