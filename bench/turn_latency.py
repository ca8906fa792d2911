"""One user's time to first visible text and whole-turn time per decoding setting, in the terminal chat and the server.

The terminal chat (``personagpt interact``: a :class:`~personagpt.generate.conversation.Conversation` decoding on
its own cache, or through an engine of its own where llama-cpp-python is installed, as ``interact`` does) and the
server (``create_app`` with its defaults, one streaming client through the official
``openai`` package) answer the same ``--turns`` validation contexts (a dialogue cut before a bot turn, seed 0) in
persona mode and in goal mode, once per setting, one setting after another, each after one warm-up turn. The
first visible text is the first streamed piece that is not blank. Settings change the front ends' defaults only in
what their name says. Ratios are against plain sampling (N = 1, no guidance, free answers) in the same run.
``--warm`` times a conversation going on instead of a new one: the session answers the turn before (not timed),
so the prefix cache holds the history, its reply included, as in a live chat.

    python bench/turn_latency.py [--turns 20] [--warm] [--out bench/results/turn_latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import threading
import time
from dataclasses import replace
from pathlib import Path

from personagpt.cli.common import terminal_engine
from personagpt.data.dialogues import load_dialogues
from personagpt.format import DEFAULT_ACTIONS
from personagpt.generate.conversation import Conversation
from personagpt.generate.sampling import FRONT_END_DEFAULTS, SamplingConfig
from personagpt.generate.slots import choose_backend
from personagpt.models.hardware import describe_hardware
from personagpt.models.load import load_chat_model

DATA = Path(os.environ.get("PERSONAGPT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PLAIN = dict(num_candidates=1, commit_tokens=0, goal_guidance=1.0, persona_guidance=1.0, consistent_answers=False,
             yes_no_first=False)
SETTINGS = {
    "plain (N=1)": {},
    "answer rule, yes/no first": dict(consistent_answers=True, yes_no_first=True),
    "goal g=2.5": dict(goal_guidance=2.5),
    "best of 4, commit 8": dict(num_candidates=4, commit_tokens=8),
    "best of 2, commit 8, goal g=2.5": dict(num_candidates=2, commit_tokens=8, goal_guidance=2.5),
    "defaults": None,  # the front ends' defaults as shipped
}


def contexts(count: int, warm: bool = False) -> list[dict]:
    """``count`` validation dialogues cut before a bot turn; ``warm``: after at least one earlier bot turn."""
    dialogues = load_dialogues(DATA / "personachat" / "valid_both_original_no_cands.txt")
    rng = random.Random(0)
    picked = []
    for d in rng.sample([d for d in dialogues if len(d.turns) >= (6 if warm else 4)], count):
        cut = rng.randrange(1 + warm, len(d.turns) // 2) * 2 - 1  # the bot (p2) speaks next
        picked.append({"turns": list(d.turns[max(0, cut - 5):cut]), "persona": list(d.p2_facts),
                       "goal": DEFAULT_ACTIONS[rng.randrange(len(DEFAULT_ACTIONS))]})
    return picked


def terminal_turn(model, fmt, job: dict, sampling: SamplingConfig, mode: str, seed: int,
                  engine=None, warm: bool = False) -> tuple[float, float]:
    """A new conversation's first turn after the context's history (a client that resends a history); ``warm``:
    the session answers the turn before first (not timed), then the user's last message is timed."""
    turns = job["turns"][:-2] if warm else job["turns"]
    conversation = Conversation.from_turns(model, fmt, turns, persona=job["persona"],
                                           goal=job["goal"] if mode == "goal" else None, sampling=sampling, seed=seed,
                                           engine=engine)
    if warm:
        conversation.respond()
        conversation.add_turn(job["turns"][-1])
    started, first = time.perf_counter(), None
    for piece in conversation.stream():
        if first is None and piece.strip():
            first = time.perf_counter() - started
    total = time.perf_counter() - started
    return (first if first is not None else total), total


def server_turn(client, job: dict, extra: dict, mode: str, seed: int, warm: bool = False) -> tuple[float, float]:
    """As :func:`terminal_turn`, through the server (``warm``: the turn before answered first, its reply resent)."""
    messages = [{"role": "system", "content": " ".join(job["persona"])}]
    turns = job["turns"][:-2] if warm else job["turns"]
    for i, turn in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": turn})
    body = dict(extra) | ({"goal": job["goal"]} if mode == "goal" else {})
    if warm:
        earlier = client.chat.completions.create(model="personagpt", messages=messages, seed=seed, extra_body=body)
        messages += [{"role": "assistant", "content": earlier.choices[0].message.content},
                     {"role": "user", "content": job["turns"][-1]}]
    started, first = time.perf_counter(), None
    stream = client.chat.completions.create(model="personagpt", messages=messages, stream=True, seed=seed,
                                            extra_body=body)
    for chunk in stream:
        if chunk.choices and (chunk.choices[0].delta.content or "").strip() and first is None:
            first = time.perf_counter() - started
    total = time.perf_counter() - started
    return (first if first is not None else total), total


def start_server(model, fmt):
    """Our app with its defaults on a free port, in a thread, and an official client for it."""
    import socket

    import openai
    import uvicorn

    from personagpt.serve.app import create_app
    from personagpt.serve.state import ServerSettings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(ServerSettings(), loader=lambda: (model, fmt)),
                                           host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
    while True:
        try:
            client.models.list()
            return server, client
        except openai.APIError:
            time.sleep(0.5)


def summarize(pairs: list[tuple[float, float]]) -> dict:
    firsts, totals = [p[0] for p in pairs], [p[1] for p in pairs]
    return {"first_text_ms": 1000 * statistics.mean(firsts), "first_text_median_ms": 1000 * statistics.median(firsts),
            "turn_ms": 1000 * statistics.mean(totals), "turn_median_ms": 1000 * statistics.median(totals)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=13, help="contexts; the last one warms up")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--paths", nargs="+", default=["terminal", "server"], choices=["terminal", "server"])
    parser.add_argument("--warm", action="store_true", help="time a conversation's next turn, its earlier turn "
                        "answered first in the same session (the prefix cache warm), instead of a new conversation's "
                        "first turn")
    parser.add_argument("--out", type=Path, default=Path("bench/results/turn_latency.json"))
    args = parser.parse_args()

    jobs = contexts(args.turns, args.warm)
    results = {"cpu": describe_hardware(), "turns": args.turns, "session": "warm" if args.warm else "new"}
    model, fmt = load_chat_model(None)
    model.eval()
    results["backend"] = " / ".join(choose_backend(None, model))
    for path in args.paths:
        for mode in ("persona", "goal"):
            for name in args.settings:
                change = SETTINGS[name]
                if path == "terminal":
                    sampling = FRONT_END_DEFAULTS if change is None else replace(
                        FRONT_END_DEFAULTS, **(PLAIN | change))

                    engine = terminal_engine(model, fmt, sampling, 1024)  # what interact decodes through

                    def turn(job, seed, sampling=sampling, engine=engine):
                        return terminal_turn(model, fmt, job, sampling, mode, seed, engine, args.warm)
                    server = None
                else:  # a fresh server per setting: every setting starts from an empty prefix cache
                    server, client = start_server(model, fmt)
                    extra = {} if change is None else {"candidates": 1, "commit_tokens": 0, "goal_guidance": 1.0,
                                                       "persona_guidance": 1.0, "consistent_answers": False,
                                                       "yes_no_first": False} | change
                    if "num_candidates" in extra:
                        extra["candidates"] = extra.pop("num_candidates")

                    def turn(job, seed, extra=extra, client=client):
                        return server_turn(client, job, extra, mode, seed, args.warm)
                turn(jobs[-1], 999)  # warm-up, on a context not measured
                row = summarize([turn(job, i) for i, job in enumerate(jobs[:-1])])
                results[f"{path} {mode} {name}"] = row
                print(path, mode, name, json.dumps({k: round(v, 1) for k, v in row.items()}), flush=True)
                if server is not None:
                    server.should_exit = True
                    time.sleep(1)
                elif engine is not None:
                    engine.close()
    for key, row in list(results.items()):
        if isinstance(row, dict) and "turn_ms" in row:
            base = results[" ".join(key.split()[:2]) + " plain (N=1)"]
            row["first_text_ratio"] = row["first_text_ms"] / base["first_text_ms"]
            row["turn_ratio"] = row["turn_ms"] / base["turn_ms"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"{results['cpu']}\n\n| path, mode, setting | first text (ms) | x plain | whole turn (ms) | x plain |\n"
          "|---|---:|---:|---:|---:|")
    for key, row in results.items():
        if isinstance(row, dict) and "turn_ms" in row:
            print(f"| {key} | {row['first_text_ms']:.0f} | {row['first_text_ratio']:.2f} | {row['turn_ms']:.0f} | "
                  f"{row['turn_ratio']:.2f} |")


if __name__ == "__main__":
    main()
