"""Per-turn latency and time to first text of best-of-N decoding (bundled model, one process, same conversations).

Each turn answers the user turns of the first validation dialogues with the dialogue's persona; every setting
runs the same turns with the same seed, alternating settings per turn so drifts in machine load hit all of them.
A setting is ``N`` or ``N:C`` (N candidates, chosen after C tokens; 0 or none: among whole replies).

    python bench/rerank_latency.py [--dialogues 3] [--turns 4] [--settings 1 4:8 4:0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from personagpt.data.dialogues import load_dialogues
from personagpt.generate.conversation import Conversation, SamplingConfig
from personagpt.models.fastpath import choose_fast_path
from personagpt.models.load import load_chat_model
from personagpt.models.hardware import describe_hardware

DATA = Path(os.environ.get("PERSONAGPT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=3)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--settings", nargs="+", default=["1", "4:8", "4:0"])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    model, fmt = load_chat_model(None)
    print(describe_hardware(), "| decoding:", choose_fast_path(None, model).describe())
    dialogues = load_dialogues(DATA / "personachat" / "valid_both_original_no_cands.txt")[: args.dialogues]
    configs = {}
    for setting in args.settings:
        n, _, commit = setting.partition(":")
        configs[setting] = SamplingConfig(max_new_tokens=args.max_new_tokens, num_candidates=int(n),
                                          commit_tokens=int(commit or 0))
    times = {s: [] for s in configs}
    firsts = {s: [] for s in configs}
    for d in dialogues:
        sessions = {s: Conversation.with_persona(model, fmt, d.p2_facts, seed=0, sampling=cfg)
                    for s, cfg in configs.items()}
        for user in d.turns[0::2][: args.turns]:
            for s, session in sessions.items():
                session.add_turn(user)
                started = time.perf_counter()
                first = None
                for _ in session.stream():
                    first = first or time.perf_counter()
                times[s].append(time.perf_counter() - started)
                firsts[s].append((first or time.perf_counter()) - started)
    base, base_first = statistics.median(times[args.settings[0]]), statistics.median(firsts[args.settings[0]])
    for s in configs:
        median, first = statistics.median(times[s]), statistics.median(firsts[s])
        print(f"{s}: median turn {1000 * median:.0f} ms ({median / base:.2f}x {args.settings[0]}), first text "
              f"{1000 * first:.0f} ms ({first / base_first:.2f}x) over {len(times[s])} turns")
    for s, session in sessions.items():
        print(f"{s} last conversation: {session.turns[1::2]}")


if __name__ == "__main__":
    main()
