"""Precision and recall of contradiction detectors on the hand-labelled consistency set.

The set (``bench/data/consistency_cases.jsonl``, built by ``bench/consistency_cases.py`` and labelled by hand)
is a test set: no detector below was tuned on it. Each detector says "contradiction" or not for a case (persona,
history ending with a question about one fact, reply); a contradiction is the positive class.

* ``contrast``: the bundled model's log p(reply | persona with its facts negated,
  history) - log p(reply | persona, history) > 0, a threshold fixed before looking at the set;
* ``question`` (what the reranker uses first): :class:`personagpt.generate.consistency.ConsistencyChecker` finds which
  persona fact the last turn's yes/no question is about (MiniLM, not told the asked fact) and the reply's opening
  words answer against it;
* ``question or contrast``: either says contradiction;
* ``polarity``: as ``question`` but told the asked fact (an upper bound for the matching);
* ``minilm``: all-MiniLM-L6-v2 puts question + reply closer to the negated fact than to the fact.

    python bench/consistency_eval.py [--cases bench/data/consistency_cases.jsonl]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from personagpt.personas.facts import answer_polarity, negate
from personagpt.models.load import load_chat_model
from personagpt.models.hardware import describe_hardware
from personagpt.generate.best_of_n import contradiction


def scores(predicted: list[bool], gold: list[bool]) -> dict:
    tp = sum(p and g for p, g in zip(predicted, gold))
    fp = sum(p and not g for p, g in zip(predicted, gold))
    fn = sum(g and not p for p, g in zip(predicted, gold))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = sum(p == g for p, g in zip(predicted, gold)) / len(gold)
    return {"precision": 100 * precision, "recall": 100 * recall, "f1": 100 * f1, "accuracy": 100 * accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=Path, default=Path("bench/data/consistency_cases.jsonl"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/consistency_eval.json"))
    args = parser.parse_args()
    cases = [json.loads(line) for line in args.cases.read_text().splitlines() if line.strip()]
    cases = [c for c in cases if c.get("label") in ("contradiction", "consistent")]
    gold = [c["label"] == "contradiction" for c in cases]
    print(f"{len(cases)} labelled cases, {sum(gold)} contradictions ({describe_hardware()})")

    model, fmt = load_chat_model(None)
    started = time.perf_counter()
    contrast = [contradiction(model, fmt, c["persona"], c["turns"], c["reply"]) or 0.0 for c in cases]
    contrast_seconds = (time.perf_counter() - started) / len(cases)
    polarity = [answer_polarity(c["reply"]) for c in cases]

    from personagpt.control.goals import SentenceEmbedder

    embedder = SentenceEmbedder()
    said = embedder.encode([c["question"] + " " + c["reply"] for c in cases])
    facts = embedder.encode([c["fact"] for c in cases])
    negated = embedder.encode([negate(c["fact"]) for c in cases])
    closer_to_negation = ((said * negated).sum(-1) > (said * facts).sum(-1)).tolist()
    from personagpt.generate.consistency import ConsistencyChecker

    checker = ConsistencyChecker(embedder)
    asked = [checker.asked_fact(c["turns"][-1], c["persona"]) for c in cases]
    denied = [checker.denies(c["reply"], a) for c, a in zip(cases, asked)]
    matched = sum(a is not None and a.fact == c["fact"] for a, c in zip(asked, cases))

    results = {
        "cases": len(cases), "contradictions": sum(gold), "cpu": describe_hardware(),
        "contrast": scores([s > 0 for s in contrast], gold) | {"seconds_per_case": contrast_seconds},
        "polarity": scores([p is not None and p != c["expected"] for p, c in zip(polarity, cases)], gold),
        "minilm": scores(closer_to_negation, gold),
        "question": scores(denied, gold) | {"asked_fact_found": matched},
        "question or contrast": scores([d or s > 0 for d, s in zip(denied, contrast)], gold),
    }
    for condition in ("true", "negated"):  # true: the model's own contradictions, the reranker's real cases
        subset = [i for i, c in enumerate(cases) if c["condition"] == condition]
        for name, predicted in (("contrast", [s > 0 for s in contrast]), ("question", denied)):
            results[f"{name}_on_{condition}_persona_replies"] = scores(
                [predicted[i] for i in subset], [gold[i] for i in subset])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print("| detector | precision | recall | F1 | accuracy |\n|---|---:|---:|---:|---:|")
    for name in ("contrast", "question", "question or contrast", "polarity", "minilm"):
        r = results[name]
        print(f"| {name} | {r['precision']:.1f} | {r['recall']:.1f} | {r['f1']:.1f} | {r['accuracy']:.1f} |")
    print(f"contrast: {1000 * contrast_seconds:.0f} ms per case (two scoring passes); question: the asked fact "
          f"found in {matched} of {len(cases)} cases")
    for condition in ("true", "negated"):
        for name in ("contrast", "question"):
            r = results[f"{name}_on_{condition}_persona_replies"]
            print(f"{name} on replies given with the {condition} persona: precision {r['precision']:.1f}, "
                  f"recall {r['recall']:.1f}")
    ranked = sorted(range(len(cases)), key=lambda i: -contrast[i])
    print("most contradicting by contrast:", [(cases[i]["reply"], round(contrast[i], 2), cases[i]["label"])
                                             for i in ranked[:5]])


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
