"""Cost per turn of the two authentication identifiers on the same interviews (bundled model, one process).

Replays the first ``--interviews`` transcripts of an ``auth eval`` results file through a fresh likelihood and
embedding identifier (K = that file's candidates) and reports the median time of one exchange's update, per turn.

    python bench/auth_identifiers.py runs/auth/eval/results.json [--interviews 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from personagpt.auth.env import Episode
from personagpt.auth.identify import EmbeddingIdentifier, IdentifierHead, LikelihoodIdentifier, PooledEncoder, packaged_head_path
from personagpt.models import load_chat_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--interviews", type=int, default=10)
    args = parser.parse_args()
    saved = json.loads(args.results.read_text())
    episodes = [Episode.from_json(e) for r in saved["results"].values() for e in r["episodes"]][: args.interviews]
    model, fmt = load_chat_model(None)
    model.eval()
    encoder, head = PooledEncoder(model, fmt), IdentifierHead.load(packaged_head_path())
    makers = {"likelihood": lambda c: LikelihoodIdentifier(model, fmt, c),
              "embedding": lambda c: EmbeddingIdentifier(encoder, head, c)}
    print(f"torch threads {torch.get_num_threads()}, K = {len(episodes[0].candidates)}, {len(episodes)} interviews")
    for name, make in makers.items():
        times: dict[int, list[float]] = {}
        setup = []
        for e in episodes:
            started = time.perf_counter()
            identifier = make(e.candidates)
            setup.append(time.perf_counter() - started)
            turns = e.transcript.turns
            for t in range(0, len(turns) - 1, 2):
                started = time.perf_counter()
                identifier.add_exchange(turns[t], turns[t + 1])
                times.setdefault(t // 2 + 1, []).append(time.perf_counter() - started)
        print(f"{name}: set-up {1000 * statistics.median(setup):.0f} ms; per exchange (ms) "
              + ", ".join(f"turn {t} {1000 * statistics.median(v):.0f}" for t, v in times.items()))


if __name__ == "__main__":
    main()
