"""The authentication identifiers on the same interviews: Hits@1 per turn and cost per turn.

Replays the first ``--interviews`` transcripts of each policy in an ``auth eval`` results file through a fresh
likelihood, embedding (the shipped head) and sentence identifier, with the file's candidates, and reports
per identifier and policy Hits@1 of K after each turn (95% Wilson intervals), verification ROC AUC after 4 and 8
turns, and the median time of one
exchange's update. The likelihood identifier needs K rows of the dialogue model per turn, so it is measured here on
a subset rather than inside ``auth eval`` (``--likelihood`` there does the same, slowly).

    python bench/experiments/auth_identifiers.py runs/auth/eval/results.json [--interviews 12] [--identifiers sentence embedding]
        [--head runs/auth/identifier.pt]

``--gold N`` instead ranks on N validation dialogues as they were written (the persona owner's own turns as the
answers, 20 candidates from the split's personas): no generation, so it shows the identifiers apart from the
interviews' quality.

    python bench/experiments/auth_identifiers.py --gold 300 --identifiers sentence embedding
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from personagpt.auth.interview import Episode, candidate_sets, rescore
from personagpt.auth.identify import (EmbeddingIdentifier, FactEmbeddings, IdentifierHead, LikelihoodIdentifier,
                                      PooledEncoder, SentenceIdentifier, packaged_head_path)
from personagpt.auth.report import claims, hits_by_turn, markdown_table, roc_auc
from personagpt.data.dialogues import default_data_dir, distinct_personas, load_dialogues
from personagpt.models.load import load_chat_model
from personagpt.control.selfplay import Transcript


def gold_episodes(count: int, k: int = 20, seed: int = 0) -> list[Episode]:
    """Validation dialogues as interviews of 7 exchanges: p1's turns the questions, p2's the answers, p2's persona the truth."""
    import random

    split = load_dialogues(default_data_dir() / "personachat" / "valid_both_original_no_cands.txt")
    pool = distinct_personas(d.p2_facts for d in split)
    chosen = random.Random(seed).sample([d for d in split if d.p2_facts and len(d.turns) >= 14], count)
    sets = candidate_sets([d.p2_facts for d in chosen], pool, k, seed)
    return [Episode(c, t, Transcript(d.p2_facts, d.turns[:14], [])) for d, (c, t) in zip(chosen, sets)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="?")
    parser.add_argument("--interviews", type=int, default=12)
    parser.add_argument("--gold", type=int, default=0, help="Rank on this many validation dialogues instead.")
    parser.add_argument("--identifiers", nargs="+", default=["likelihood", "embedding", "sentence"])
    parser.add_argument("--head", type=Path, default=None,
                        help="Embedding identifier head (default: the shipped one), e.g. a retrained one.")
    args = parser.parse_args()
    if args.gold:
        saved = {"k": 20}
        policies = {"gold dialogue": gold_episodes(args.gold)}
        print(f"{args.gold} validation dialogues as written")
    else:
        saved = json.loads(args.results.read_text())
        policies = {name: [Episode.from_json(e) for e in r["episodes"][: args.interviews]]
                    for name, r in saved["results"].items()}
        print(f"first {args.interviews} interviews per policy of {args.results}")
    model, fmt = load_chat_model(None)
    model.eval()
    encoder, head, facts = PooledEncoder(model, fmt), IdentifierHead.load(args.head or packaged_head_path()), FactEmbeddings()
    makers = {"likelihood": lambda c: LikelihoodIdentifier(model, fmt, c),
              "embedding": lambda c: EmbeddingIdentifier(encoder, head, c),
              "sentence": lambda c: SentenceIdentifier(facts, c)}
    print(f"torch threads {torch.get_num_threads()}, K = {saved['k']}")
    for name in args.identifiers:
        make = makers[name]
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
            for turn in (4, 7 if args.gold else 8):
                aucs.append(f"{policy}@{turn} {roc_auc(*claims(episodes, f'bench-{name}', turn)):.3f}")
        print(f"\n{name} identifier: median {1000 * statistics.median(times):.0f} ms per exchange "
              f"({len(times)} exchanges); Hits@1 of {saved['k']} (%):")
        print(markdown_table(table))
        print("verification ROC AUC (half true claims, half false, as auth eval): " + ", ".join(aucs))


if __name__ == "__main__":
    main()
