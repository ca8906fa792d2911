"""A first look at best-of-N reply quality on validation dialogues (a small, stated subset; not the issue's sweep).

For the first ``--dialogues`` validation dialogues, every turn of the p2 speaker is generated from the gold history
with the bundled model (sampling, top-k 10 / top-p 0.92, seed 0), at each N. Reported per N: ConvAI2 F1 against the
gold reply, distinct-1/2 over all replies, the share of replies repeating a word 4-gram of an earlier bot turn of the
same dialogue, and the median turn time.

    python bench/rerank_quality.py [--dialogues 20] [--ns 1 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from personagpt.data import load_dialogues
from personagpt.evaluation import distinct_n, word_f1
from personagpt.generation import Conversation, SamplingConfig
from personagpt.models import load_chat_model
from personagpt.rerank import repetition

DATA = Path(os.environ.get("PERSONAGPT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=20)
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    model, fmt = load_chat_model(None)
    dialogues = load_dialogues(DATA / "personachat" / "valid_both_original_no_cands.txt")[: args.dialogues]
    for n in args.ns:
        replies, f1, repeats, times = [], [], 0, []
        for d in dialogues:
            bot_said = []
            for t in range(1, len(d.turns), 2):  # p2's turns
                c = Conversation.from_turns(model, fmt, d.turns[:t], persona=d.p2_facts, seed=t,
                                            sampling=SamplingConfig(max_new_tokens=32, num_candidates=n))
                started = time.perf_counter()
                reply = c.respond()
                times.append(time.perf_counter() - started)
                replies.append(reply)
                f1.append(word_f1(reply, d.turns[t]))
                repeats += repetition(reply, bot_said) > 0
                bot_said.append(d.turns[t])
        print(f"N={n}: {len(replies)} replies, F1 {100 * sum(f1) / len(f1):.2f}, distinct-1 {distinct_n(replies, 1):.3f}, "
              f"distinct-2 {distinct_n(replies, 2):.3f}, repeating an earlier bot 4-gram {100 * repeats / len(replies):.1f}%, "
              f"median turn {1000 * statistics.median(times):.0f} ms", flush=True)


if __name__ == "__main__":
    main()
