"""Per-turn latency of best-of-N decoding at N = 1, 4, 8 (bundled model, one process, same conversation).

Each turn answers the user turns of the first validation dialogues with the dialogue's persona; every N runs the
same turns with the same seed, alternating N per turn so drifts in machine load hit all of them.

    python bench/rerank_latency.py [--dialogues 3] [--turns 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from personagpt.data import load_dialogues
from personagpt.generation import Conversation, SamplingConfig
from personagpt.models import load_chat_model

DATA = Path(os.environ.get("PERSONAGPT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=3)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()
    model, fmt = load_chat_model(None)
    dialogues = load_dialogues(DATA / "personachat" / "valid_both_original_no_cands.txt")[: args.dialogues]
    times = {n: [] for n in args.ns}
    for d in dialogues:
        sessions = {n: Conversation.with_persona(model, fmt, d.p2_facts, seed=0,
                                                 sampling=SamplingConfig(max_new_tokens=32, num_candidates=n))
                    for n in args.ns}
        for user in d.turns[0::2][: args.turns]:
            for n, session in sessions.items():
                session.add_turn(user)
                started = time.perf_counter()
                session.respond()
                times[n].append(time.perf_counter() - started)
    base = statistics.median(times[args.ns[0]])
    for n in args.ns:
        median = statistics.median(times[n])
        print(f"N={n}: median turn {1000 * median:.0f} ms ({median / base:.2f}x N={args.ns[0]}) over {len(times[n])} turns")
    for n, session in sessions.items():
        print(f"N={n} last conversation: {session.turns[1::2]}")


if __name__ == "__main__":
    main()
