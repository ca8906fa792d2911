"""Classifier-free guidance sweep: goal control, persona answers, fluency and cost per guidance scale.

Goal control: ``--contexts`` validation contexts (a dialogue cut before a random turn, seed 0) x the 11 action
codes; the bundled model writes the next turn in goal mode with the CLI's sampling (top-k 10, top-p 0.92, at most
40 tokens, seed per reply), through one engine (as the server does), at each goal scale; the goal labeler (semantic
when its encoder is installed) judges each reply against its goal. Persona questions: for each of the first
``--questions`` validation dialogues, a yes/no question about one of p2's facts (:func:`personagpt.personas.facts.
question`, seed 1) after the gold history up to a random point, answered in character at each persona scale; the
reply's opening words say whether it answers as the fact says (recall) or against it (contradiction).

Fluency: the unguided model's mean log-probability per token of each goal reply under the goal prompt (the first
``--fluency`` contexts, scored on the bundled model's fast path even when ``--model`` decodes), so a scale that
pushes wording off the natural path shows. Repeats: replies that repeat one of their own word 4-grams. Time:
seconds per reply with all replies of a setting in flight together.

Each setting is saved to ``--out`` when done; a rerun skips those already there (``--contexts`` and
``--questions`` must match). Validation data only, never used to tune anything else.

    python bench/guidance_sweep.py [--contexts 300] [--goal-scales 1 1.5 2 2.5 3 4] [--persona-scales 1 1.5 2 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from personagpt.data.dialogues import load_dialogues
from personagpt.eval.evaluate import persona_probes
from personagpt.format import DEFAULT_ACTIONS, HISTORY_TURNS
from personagpt.generate.best_of_n import default_labeler, reply_logprobs, repetition
from personagpt.generate.conversation import Conversation
from personagpt.generate.engine import Engine
from personagpt.generate.sampling import SamplingConfig
from personagpt.models.hardware import describe_hardware
from personagpt.models.load import load_chat_model
from personagpt.models.precision import serving_model
from personagpt.personas.facts import answer_polarity

DATA = Path(os.environ.get("PERSONAGPT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SAMPLING = SamplingConfig(max_new_tokens=40)  # the CLI's sampling; best-of-N set per setting


def goal_jobs(dialogues, contexts: int) -> list[dict]:
    rng = random.Random(0)
    eligible = [d for d in dialogues if len(d.turns) >= 2]
    picked = [(d, rng.randrange(1, len(d.turns))) for d in rng.sample(eligible, min(contexts, len(eligible)))]
    return [{"turns": list(d.turns[max(0, cut - HISTORY_TURNS):cut]), "goal": goal, "context": i}
            for i, (d, cut) in enumerate(picked) for goal in DEFAULT_ACTIONS]


def question_jobs(dialogues, questions: int) -> list[dict]:
    return [{"turns": p.turns, "persona": p.persona, "expected": p.expected, "fact": p.fact}
            for p in persona_probes(dialogues, questions)]


def run(engine, jobs, sampling: SamplingConfig, desc: str, workers: int) -> tuple[list[str], float]:
    def one(i_job):
        i, job = i_job
        conversation = Conversation.from_turns(engine.model, engine.fmt, job["turns"], persona=job.get("persona", ()),
                                               goal=job.get("goal"), sampling=sampling, seed=i, engine=engine)
        return conversation.respond()

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        replies = list(tqdm(pool.map(one, enumerate(jobs)), total=len(jobs), desc=desc, unit="reply"))
    return replies, time.perf_counter() - started


def resumable(out: Path, size: dict) -> dict:
    """The results saved so far at ``out`` (a rerun skips what is there), refused if they are of another size;
    stamped with this machine."""
    results = json.loads(out.read_text()) if out.exists() else {}
    if results and results.get("size") != size:
        raise SystemExit(f"{out} holds a run of another size ({results.get('size')}); use another --out")
    results["size"], results["cpu"] = size, describe_hardware()
    return results


def bundled_engine(name: str | None = None):
    """The bundled model (or the model ``name``) and one engine over its serving copy, as the server runs them
    (32 rows)."""
    model, fmt = load_chat_model(name)
    model.eval()
    return model, fmt, Engine(serving_model(model, fmt=fmt), fmt, max_batch=32, max_queue=4096, capacity=1024)


def bundled_judge(engine, name: str | None):
    """The forward that scores fluency: always the bundled model's (the engine's own when it runs the bundled
    model), so replies of another model are judged by the same reader."""
    if name is None:
        return engine.decoder
    from personagpt.models.fastpath import choose_fast_path, fast_decoder

    judge, _ = load_chat_model(None)
    judge = serving_model(judge.eval())
    return fast_decoder(judge, choose_fast_path(None, judge).mode)


def self_repeats(reply: str) -> bool:
    return repetition(reply, []) > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=300)
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--goal-scales", type=float, nargs="+", default=[1, 1.5, 2, 2.5, 3, 4])
    parser.add_argument("--persona-scales", type=float, nargs="*", default=[1, 1.5, 2, 3])
    parser.add_argument("--candidates", type=int, nargs="+", default=[1], help="best-of-N settings to cross with "
                        "the scales (4: the default best-of-4, chosen after 8 tokens)")
    parser.add_argument("--fluency", type=int, default=30, help="contexts whose replies are scored for fluency")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--model", help="a model other than the bundled one (its replies' fluency is still "
                        "scored by the bundled model)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/guidance_sweep.json"))
    args = parser.parse_args()
    results = resumable(args.out, {"contexts": args.contexts, "questions": args.questions})
    model, fmt, engine = bundled_engine(args.model)
    judge = bundled_judge(engine, args.model)
    results["decoding"], results["model"] = engine.describe(), args.model or "bundled"
    labeler = default_labeler()
    split = load_dialogues(DATA / "personachat" / "valid_both_original_no_cands.txt")
    goals, questions = goal_jobs(split, args.contexts), question_jobs(split, args.questions)
    print(f"{len(goals)} goal turns, {len(questions)} persona questions; {results['cpu']}; {results['decoding']}",
          flush=True)

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))

    for n in args.candidates:
        sampling = replace(SAMPLING, num_candidates=n, commit_tokens=8 if n > 1 else 0)
        for scale in args.goal_scales:
            key = f"goal g={scale:g} N={n}"
            if key in results:
                continue
            replies, seconds = run(engine, goals, replace(sampling, goal_guidance=scale), key, args.workers)
            accepted = [bool(r.strip()) and labeler.accepts(r, job["goal"]) for r, job in zip(replies, goals)]
            per_goal = {g: 100 * sum(a for a, j in zip(accepted, goals) if j["goal"] == g) /
                        sum(j["goal"] == g for j in goals) for g in DEFAULT_ACTIONS}
            fluency = []
            for job, reply in zip(goals, replies):
                if job["context"] >= args.fluency:
                    continue
                prompt = Conversation.from_turns(model, fmt, job["turns"], goal=job["goal"]).context_ids(40)
                ids = fmt.text(reply)
                with torch.inference_mode():  # the bundled model's fast path, as it decodes
                    fluency.append(float(reply_logprobs(judge, prompt, [ids], fmt.eos_id)[0]) / (len(ids) + 1))
            results[key] = {"control": 100 * sum(accepted) / len(accepted), "weakest": min(per_goal.values()),
                            "per_goal": per_goal, "fluency_logprob_per_token": sum(fluency) / len(fluency),
                            "self_repeats": 100 * sum(map(self_repeats, replies)) / len(replies),
                            "seconds_per_reply": seconds / len(replies),
                            "samples": [{"goal": j["goal"], "reply": r} for j, r in list(zip(goals, replies))[:11]]}
            save()
            print(key, json.dumps({k: v for k, v in results[key].items() if k not in ("per_goal", "samples")}),
                  flush=True)
        for scale in args.persona_scales:
            key = f"persona g={scale:g} N={n}"
            if key in results:
                continue
            replies, seconds = run(engine, questions, replace(sampling, persona_guidance=scale), key, args.workers)
            polarity = [answer_polarity(r) for r in replies]
            total = len(replies)
            results[key] = {"recall": 100 * sum(p == j["expected"] for p, j in zip(polarity, questions)) / total,
                            "contradiction": 100 * sum(p is not None and p != j["expected"]
                                                       for p, j in zip(polarity, questions)) / total,
                            "self_repeats": 100 * sum(map(self_repeats, replies)) / total,
                            "seconds_per_reply": seconds / total,
                            "samples": [{"fact": j["fact"], "question": j["turns"][-1], "reply": r}
                                        for j, r in list(zip(questions, replies))[:8]]}
            save()
            print(key, json.dumps({k: v for k, v in results[key].items() if k != "samples"}), flush=True)
    engine.close()
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [f"{results['cpu']}; {results['decoding']}; {results['size']}", "",
             "| setting | control (%) | weakest goal (%) | fluency (log p / token) | self-repeats (%) | s / reply |",
             "|---|---:|---:|---:|---:|---:|"]
    for key, row in results.items():
        if key.startswith("goal"):
            lines.append(f"| {key} | {row['control']:.1f} | {row['weakest']:.1f} | "
                         f"{row['fluency_logprob_per_token']:.2f} | {row['self_repeats']:.1f} | "
                         f"{row['seconds_per_reply']:.2f} |")
    lines += ["", "| setting | answered as the fact says (%) | against it (%) | self-repeats (%) | s / reply |",
              "|---|---:|---:|---:|---:|"]
    for key, row in results.items():
        if key.startswith("persona"):
            lines.append(f"| {key} | {row['recall']:.1f} | {row['contradiction']:.1f} | {row['self_repeats']:.1f} | "
                         f"{row['seconds_per_reply']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
