"""The int8 fast path's quality gate: PPL/word on validation dialogues within 1% of the fp32 reference, and how
often its next-token argmax agrees with the reference's (teacher forcing, every response token).

    python bench/fastpath_quality.py --dialogues 100            # writes bench/results/fastpath_quality.json

The reference is the transformers model in fp32; each fast mode scores the same examples one sequence at a time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from personagpt.data.dialogues import default_data_dir, load_dialogues
from personagpt.eval.evaluate import Targets, examples_for, perplexities
from personagpt.models.fastpath import FastDecoder
from personagpt.models.load import load_chat_model
from personagpt.models.hardware import describe_hardware
from personagpt.scoring import score_examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dialogues", type=int, default=100)
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fastpath_quality.json")
    args = parser.parse_args()
    model, fmt = load_chat_model(args.model)
    model.eval()
    dialogues = load_dialogues(default_data_dir() / "personachat" / "valid_both_original_no_cands.txt")
    targets = Targets.of(dialogues[: args.dialogues])
    examples = examples_for(targets, fmt, 1024)
    rows, reference = {}, None
    for name, scorer, batch in [("reference fp32", model, 8), ("fast fp32", FastDecoder(model), 1),
                                ("fast int8", FastDecoder(model, int8=True), 1)]:
        started = time.perf_counter()
        scores = score_examples(scorer, fmt, examples, targets.words, batch)
        row = {k: round(v, 4) for k, v in perplexities(scores).items()}
        predicted = [p for t in scores for p in t.predicted]
        if reference is None:
            reference = predicted
        row["argmax_agreement"] = round(sum(a == b for a, b in zip(predicted, reference)) / len(reference), 5)
        row["positions"] = len(predicted)
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows[name] = row
        print(name, row, flush=True)
    base = rows["reference fp32"]["ppl_word"]
    for row in rows.values():
        row["ppl_word_change_pct"] = round(100 * (row["ppl_word"] / base - 1), 3)
    result = {"hardware": describe_hardware(), "torch": torch.__version__, "dialogues": args.dialogues,
              "responses": len([t for t in scores]), "rows": rows,
              "gate": "int8 PPL/word within 1% of fp32",
              "gate_met": abs(rows["fast int8"]["ppl_word_change_pct"]) <= 1.0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
