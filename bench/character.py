"""Staying in character: yes/no questions about the persona answered as the persona says, per decoding setting.

Two validation probe sets, never tuned on: ``--questions`` questions about one of the bot's own facts
(:func:`personagpt.eval.evaluate.persona_probes`: "do you have a dog ?" to "i have a dog.") and ``--same-kind``
questions about a thing of the same kind as one of its facts that it does not have
(:func:`personagpt.eval.probes.same_kind_probes`: "do you have a cat ?" to "i have two dogs."), each after the
gold history up to a random point. The bundled model answers in character through one engine (as the server
does) with the CLI's sampling (top-k 10, top-p 0.92, at most 40 tokens, seed per reply), under each setting:
best-of-N or not, the answer rule (``consistent_answers``: openings that would answer against the persona banned),
persona guidance. A reply is consistent, against the persona, or neither (it does not answer), by its opening words
(:func:`personagpt.personas.facts.answer_polarity`; :func:`personagpt.eval.probes.same_kind_verdict`).
With ``--replies`` > 0, the same setting also writes the next turn of that many validation contexts (a dialogue
cut before a p2 turn, seed 0): word F1 against the gold turn and distinct-2 over the replies.

Each setting is saved to ``--out`` when done; a rerun skips those already there.

    python bench/character.py [--questions 300] [--same-kind 400]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

from personagpt.data.dialogues import load_dialogues
from personagpt.eval.evaluate import distinct_n, persona_probes, word_f1
from personagpt.eval.probes import same_kind_probes, same_kind_verdict
from personagpt.generate.sampling import SamplingConfig
from personagpt.personas.facts import answer_polarity

sys.path.insert(0, str(Path(__file__).parent))
from guidance_sweep import DATA, bundled_engine, resumable, run  # noqa: E402  (the same engine runs, one way)

SAMPLING = SamplingConfig(max_new_tokens=40, num_candidates=1, commit_tokens=0)
SETTINGS = {  # name: changes to the CLI's sampling
    "N=1, free": dict(consistent_answers=False),
    "N=1, answer rule": dict(consistent_answers=True),
    "N=1, answer rule, persona g=2": dict(consistent_answers=True, persona_guidance=2.0),
    "N=1, answer rule, yes/no first": dict(consistent_answers=True, yes_no_first=True),
    "best of 4 (commit 8), free": dict(consistent_answers=False, num_candidates=4, commit_tokens=8),
    "best of 4 (commit 8), answer rule": dict(consistent_answers=True, num_candidates=4, commit_tokens=8),
}


def answer_all(engine, probes, sampling: SamplingConfig, desc: str, workers: int) -> tuple[list[str], float]:
    """Each probe's reply in character (seed = its index), all in flight together."""
    return run(engine, [{"turns": p.turns, "persona": p.persona} for p in probes], sampling, desc, workers)


def next_turns(dialogues, count: int) -> list:
    """``count`` validation contexts before one of p2's turns (seed 0), as probes with the gold turn."""
    import random
    from types import SimpleNamespace

    rng = random.Random(0)
    picked = []
    for d in rng.sample([d for d in dialogues if len(d.turns) >= 2], count):
        cut = rng.randrange(0, len(d.turns) // 2) * 2 + 1  # p2 speaks turns 1, 3, ...
        picked.append(SimpleNamespace(turns=list(d.turns[:cut]), persona=list(d.p2_facts), gold=d.turns[cut]))
    return picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--same-kind", type=int, default=400)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--replies", type=int, default=300, help="contexts for F1 and distinct-2 (0: none)")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--model", help="a model other than the bundled one")
    parser.add_argument("--out", type=Path, default=Path("bench/results/character.json"))
    args = parser.parse_args()
    results = resumable(args.out, {"questions": args.questions, "same_kind": args.same_kind})
    _, _, engine = bundled_engine(args.model)
    results["decoding"], results["model"] = engine.describe(), args.model or "bundled"
    split = load_dialogues(DATA / "personachat" / "valid_both_original_no_cands.txt")
    facts, others = persona_probes(split, args.questions), same_kind_probes(split, args.same_kind)
    print(f"{len(facts)} questions about a fact, {len(others)} about another thing of a fact's kind; "
          f"{results['cpu']}; {results['decoding']}", flush=True)
    turns = next_turns(split, args.replies) if args.replies else []
    for name in args.settings:
        sampling = replace(SAMPLING, **SETTINGS[name])
        if name not in results:
            replies, seconds = answer_all(engine, facts + others, sampling, name, args.workers)
            own, other = replies[:len(facts)], replies[len(facts):]
            polarity = [answer_polarity(r) for r in own]
            verdicts = [same_kind_verdict(r, p) for r, p in zip(other, others)]
            per_kind = {}
            for kind, n in Counter(p.kind for p in others).items():
                said = [v for v, p in zip(verdicts, others) if p.kind == kind]
                per_kind[kind] = {"count": n, "consistent": 100 * said.count("consistent") / n,
                                  "against": 100 * said.count("against") / n}
            agree = [p == q.expected for p, q in zip(polarity, facts)]
            disagree = [p is not None and p != q.expected for p, q in zip(polarity, facts)]
            results[name] = {
                "fact_consistent": 100 * sum(agree) / len(facts), "fact_against": 100 * sum(disagree) / len(facts),
                "same_kind_consistent": 100 * verdicts.count("consistent") / len(others),
                "same_kind_against": 100 * verdicts.count("against") / len(others),
                "per_kind": per_kind, "seconds_per_reply": seconds / len(replies),
                "samples": [{"question": p.turns[-1], "fact": p.fact, "reply": r, "verdict": v}
                            for p, r, v in list(zip(others, other, verdicts))[:12]]}
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))
            print(name, json.dumps({k: v for k, v in results[name].items() if k not in ("samples", "per_kind")}),
                  flush=True)
        if turns and "f1" not in results[name]:
            replies, seconds = answer_all(engine, turns, sampling, f"{name} (F1)", args.workers)
            results[name]["f1"] = 100 * sum(word_f1(r, t.gold) for r, t in zip(replies, turns)) / len(turns)
            results[name]["distinct_2"] = 100 * distinct_n(replies, 2)
            args.out.write_text(json.dumps(results, indent=1))
            print(name, f"F1 {results[name]['f1']:.2f} distinct-2 {results[name]['distinct_2']:.1f}", flush=True)
    engine.close()
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [f"{results['cpu']}; {results['decoding']}; {results['size']}", "",
             "| setting | own fact: consistent (%) | against (%) | same kind: consistent (%) | against (%) | F1 | "
             "distinct-2 (%) | s / reply |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in results.items():
        if isinstance(row, dict) and "fact_consistent" in row:
            lines.append(f"| {name} | {row['fact_consistent']:.1f} | {row['fact_against']:.1f} | "
                         f"{row['same_kind_consistent']:.1f} | {row['same_kind_against']:.1f} | "
                         f"{row.get('f1', float('nan')):.2f} | {row.get('distinct_2', float('nan')):.1f} | "
                         f"{row['seconds_per_reply']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
