"""How much a fact question's answer tells: read from interviews already played (``episodes-<policy>.jsonl`` of
``auth eval`` or ``bench/experiments/auth_planner_variants.py``), no generation.

    python bench/experiments/auth_answer_signal.py runs/auth/plan-eval-gated/episodes-planner.jsonl [more.jsonl ...] \
        [--weights 0 0.04 1]

For every interviewer turn that was a candidate's fact asked as a yes/no question (:func:`personagpt.personas.facts.question`),
split by whether the true persona holds that fact: how often the answer opens with yes or no, how often that
yes/no is the one the asked fact implies ("i have a dog." -> yes; what the exchange identifier counts as support),
the log-likelihood ratio such an answer and the opposite one carry, and the mean change in the truth's
log-probability among the K under the sentence identifier. With ``--weights``, every store is scored again by the
exchange identifier at each weight (0: the sentence identifier) and Hits@1 after 4 and 8 turns is printed.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from personagpt.personas.facts import answer_polarity, question


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stores", type=Path, nargs="+")
    parser.add_argument("--weights", type=float, nargs="*", default=[])
    args = parser.parse_args()
    missing = [str(s) for s in args.stores if not s.is_file()]
    if missing:
        parser.error(f"no such interview store: {', '.join(missing)}")

    gains: dict[str, list[float]] = {"held": [], "not held": []}
    matches: dict[str, list[bool]] = {"held": [], "not held": []}  # the answer is what the asked fact implies
    for store in args.stores:
        for line in store.read_text().splitlines():
            episode = json.loads(line)["episode"]
            truth = episode["truth"]
            asked_of = {}  # question -> the answer each candidate's fact implies
            for i, persona in enumerate(episode["candidates"]):
                for made in filter(None, map(question, persona)):
                    asked_of.setdefault(made[0], {})[i] = made[1]
            actions, turns = episode["transcript"]["actions"][::2], episode["transcript"]["turns"]
            scores = episode["scores"]["sentence"]
            for t, action in enumerate(actions):
                text = action[len("ask: "):] if action.startswith("ask: ") else None
                if text not in asked_of:
                    continue  # a goal, or an open topic question
                kind = "held" if truth in asked_of[text] else "not held"
                before = float(torch.log_softmax(torch.tensor(scores[t - 1]), 0)[truth]) if t else -math.log(len(scores[t]))
                gains[kind].append(float(torch.log_softmax(torch.tensor(scores[t]), 0)[truth]) - before)
                polarity = answer_polarity(turns[2 * t + 1])
                if polarity is not None:
                    implied = asked_of[text].get(truth, next(iter(asked_of[text].values())))
                    matches[kind].append(polarity == implied)
    rate = {k: sum(v) / max(1, len(v)) for k, v in matches.items()}
    print("| the true persona holds the asked fact | turns | answers with yes/no | ... the one the fact implies | "
          "mean change in log p(truth) |")
    print("|---|---:|---:|---:|---:|")
    for kind in gains:
        n = len(gains[kind])
        print(f"| {kind} | {n} | {100 * len(matches[kind]) / max(1, n):.0f}% | {100 * rate[kind]:.0f}% | "
              f"{sum(gains[kind]) / max(1, n):+.3f} |")
    if 0 < rate["not held"] < 1 and 0 < rate["held"] < 1:
        print(f"log-likelihood ratio (held : not held) of the answer the fact implies: "
              f"{math.log(rate['held'] / rate['not held']):+.2f}; of the opposite answer: "
              f"{math.log((1 - rate['held']) / (1 - rate['not held'])):+.2f}")
    if args.weights:
        rescore_with(args.stores, args.weights)


def rescore_with(stores: list[Path], weights: list[float]) -> None:
    from personagpt.auth.interview import Episode, rescore
    from personagpt.auth.identify import ExchangeIdentifier, FactEmbeddings
    from personagpt.auth.report import claims, roc_auc

    facts = FactEmbeddings()
    print("| interviews | weight | Hits@1 t4 | Hits@1 last turn | AUC last turn |")
    print("|---|---:|---:|---:|---:|")
    for store in stores:
        episodes = [Episode.from_json(json.loads(line)["episode"]) for line in store.read_text().splitlines()]
        for weight in weights:
            rescore(episodes, "w", lambda c: ExchangeIdentifier(facts, c, weight=weight))
            last = min(len(e.scores["w"]) for e in episodes)
            hits = [sum(e.ranks("w")[t - 1] == 0 for e in episodes) / len(episodes) for t in (min(4, last), last)]
            print(f"| {store} ({len(episodes)}) | {weight} | {100 * hits[0]:.1f} | {100 * hits[1]:.1f} | "
                  f"{roc_auc(*claims(episodes, 'w', last, 0)):.3f} |")


if __name__ == "__main__":
    main()
