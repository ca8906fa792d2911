"""The two authentication identifiers on the same interviews: Hits@1 per turn and cost per turn.

Replays the first ``--interviews`` transcripts of each policy in an ``auth eval`` results file through a fresh
likelihood identifier and a fresh embedding identifier (the shipped head), with the file's candidates, and reports
per identifier and policy Hits@1 of K after each turn (95% Wilson intervals), verification ROC AUC after 4 and 8
turns, and the median time of one
exchange's update. The likelihood identifier needs K rows of the dialogue model per turn, so it is measured here on
a subset rather than inside ``auth eval`` (``--likelihood`` there does the same, slowly).

    python bench/auth_identifiers.py runs/auth/eval/results.json [--interviews 12]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from personagpt.auth.env import Episode, rescore
from personagpt.auth.identify import EmbeddingIdentifier, IdentifierHead, LikelihoodIdentifier, PooledEncoder, packaged_head_path
from personagpt.auth.measure import claims, hits_by_turn, markdown_table, roc_auc
from personagpt.models import load_chat_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--interviews", type=int, default=12)
    args = parser.parse_args()
    saved = json.loads(args.results.read_text())
    policies = {name: [Episode.from_json(e) for e in r["episodes"][: args.interviews]]
                for name, r in saved["results"].items()}
    model, fmt = load_chat_model(None)
    model.eval()
    encoder, head = PooledEncoder(model, fmt), IdentifierHead.load(packaged_head_path())
    makers = {"likelihood": lambda c: LikelihoodIdentifier(model, fmt, c),
              "embedding": lambda c: EmbeddingIdentifier(encoder, head, c)}
    print(f"torch threads {torch.get_num_threads()}, K = {saved['k']}, first {args.interviews} interviews per policy")
    for name, make in makers.items():
        times: list[float] = []

        def timed(candidates):
            identifier = make(candidates)
            update = identifier.add_exchange

            def add_exchange(question, answer):
                started = time.perf_counter()
                scores = update(question, answer)
                times.append(time.perf_counter() - started)
                return scores

            identifier.add_exchange = add_exchange
            return identifier

        table, aucs = {}, []
        for policy, episodes in policies.items():
            rescore(episodes, f"bench-{name}", timed)
            table[policy] = hits_by_turn(episodes, f"bench-{name}")
            for turn in (4, 8):
                aucs.append(f"{policy}@{turn} {roc_auc(*claims(episodes, f'bench-{name}', turn)):.3f}")
        print(f"\n{name} identifier: median {1000 * statistics.median(times):.0f} ms per exchange "
              f"({len(times)} exchanges); Hits@1 of {saved['k']} (%):")
        print(markdown_table(table))
        print("verification ROC AUC (half true claims, half false, as auth eval): " + ", ".join(aucs))


if __name__ == "__main__":
    main()
