"""Where two policies' paired interviews part ways: read from stores already played (``episodes-<policy>.jsonl``
of ``auth eval``), no generation.

    python bench/experiments/auth_pair_agreement.py runs/auth/plan-eval-exact/episodes-random.jsonl \
        runs/auth/plan-eval-exact/episodes-planner.jsonl [--identifier calibrated] [--turns 8]

Interviews are paired by their index (the same persona, distractors and seed). For every interviewer turn: how many
pairs still agree on every action so far, how many say the same question and get the same answer word for word,
what the second policy did (the first's goal, another goal, a fact or topic question), and Hits@1 of each with the
discordant pairs (truth first in one and not the other) that decide a paired comparison. With exact decoding
(`auth eval --decoding exact`) two interviews that agree on every action so far must also agree on every word.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from personagpt.auth.interview import Episode


def _load(path: Path) -> dict[int, Episode]:
    return {row["index"]: Episode.from_json(row["episode"]) for row in map(json.loads, path.read_text().splitlines())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", type=Path)
    parser.add_argument("other", type=Path)
    parser.add_argument("--identifier", default="calibrated")
    parser.add_argument("--turns", type=int, default=8)
    args = parser.parse_args()
    for path in (args.baseline, args.other):
        if not path.is_file():
            parser.error(f"no such interview store: {path}")
    base, other = _load(args.baseline), _load(args.other)
    pairs = sorted(set(base) & set(other))
    if not pairs:
        parser.error("the two stores share no interview")
    if any(args.identifier not in e.scores for e in (*base.values(), *other.values())):
        parser.error(f"not every interview was scored by the {args.identifier} identifier")
    print(f"{len(pairs)} paired interviews, {args.identifier} identifier")
    print("| turn | same actions so far | same question | same answer | other: base's goal / other goal / "
          "question | Hits@1 base | Hits@1 other | only base / only other first |")
    print("|---:|---:|---:|---:|---|---:|---:|---|")
    for turn in range(args.turns):
        same_so_far = same_question = same_answer = 0
        kinds = {"goal": 0, "other goal": 0, "question": 0}
        hits = [0, 0]
        discordant = [0, 0]
        for i in pairs:
            a, b = base[i], other[i]
            at = 2 * turn
            if any(len(e.transcript.turns) <= at + 1 or len(e.scores[args.identifier]) <= turn for e in (a, b)):
                parser.error(f"interview {i} has fewer than {turn + 1} turns")
            acts_a, acts_b = a.transcript.actions, b.transcript.actions
            same_so_far += acts_a[: at + 1] == acts_b[: at + 1]
            same_question += a.transcript.turns[at] == b.transcript.turns[at]
            same_answer += a.transcript.turns[at + 1] == b.transcript.turns[at + 1]
            action = acts_b[at]
            kinds["goal" if action == acts_a[at] else "question" if str(action).startswith("ask: ")
                  else "other goal"] += 1
            first = [e.ranks(args.identifier)[turn] == 0 for e in (a, b)]  # the library's rule: ties are misses
            hits = [h + f for h, f in zip(hits, first)]
            discordant[0] += first[0] and not first[1]
            discordant[1] += first[1] and not first[0]
        n = len(pairs)
        print(f"| {turn + 1} | {same_so_far} | {same_question} | {same_answer} | {kinds['goal']} / "
              f"{kinds['other goal']} / {kinds['question']} | {100 * hits[0] / n:.1f} | {100 * hits[1] / n:.1f} | "
              f"{discordant[0]} / {discordant[1]} |")


if __name__ == "__main__":
    main()
