"""Evaluation on a Persona-Chat split: perplexities, both F1s, distinct-n, persona identification, control.

Every response of every speaker whose persona is known is a target, predicted from that speaker's persona
prefix and the dialogue so far (teacher forcing for likelihoods, generation for ConvAI2 F1).

Definitions (see the README section "Metrics"):

* ``ppl_token``: exp of the total negative log-likelihood of the gold responses (their eos included) over their
  token count, in the model's own tokenizer;
* ``ppl_word``: the same total NLL over the gold responses' word count (whitespace words), comparable across
  tokenizers;
* ``ppl_orig``: the original PersonaGPT's figure: the mean over examples (one response with its context) of the
  example's mean token loss, exponentiated; its loss skips each response's first token (``labels=turn``);
* ``tf_f1``: the original's "F1": teacher-forced argmax predictions for the same tokens, split into segments at
  eos, per segment set overlap of token ids (precision over predicted length, recall over gold length,
  ``2pr/(p+r+0.001)``), averaged over segments, then over examples;
* ``f1``: ConvAI2 F1: word unigram F1 of the *generated* reply against the gold reply after normalisation
  (lowercase, no punctuation, no articles a/an/the, single spaces), averaged over responses;
* ``distinct_1`` / ``distinct_2``: distinct word uni/bigrams over all n-grams of the generated replies;
* ``hits1_response`` / ``hits1_conversation``: the speaker's true persona ranked against distractors (19 other
  personas of the split) by the likelihood of the gold responses, per response or summed over the speaker's
  responses in the dialogue (chance: 1 in 20).
"""

from __future__ import annotations

import math
import random
import re
import string
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from tqdm.auto import tqdm

from personagpt.control.goals import GoalLabeler
from personagpt.data.dialogues import Dialogue, distinct_personas
from personagpt.data.examples import Example, persona_examples
from personagpt.errors import SettingsError
from personagpt.format import DEFAULT_ACTIONS, HISTORY_TURNS, PromptFormat
from personagpt.generate.conversation import Conversation, SamplingConfig, fit_context, generate_batch
from personagpt.generate.replay import Replay, generate_replays
from personagpt.models.fastpath import fast_decoder
from personagpt.models.hardware import resolve_mixed_precision
from personagpt.models.load import context_limit
from personagpt.models.precision import generation_model, inference_autocast
from personagpt.personas.facts import question
from personagpt.scoring import TurnScore, rank_personas, score_examples

# ---- metric definitions (pure functions, pinned by tests) ---------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """ConvAI2/ParlAI normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def word_f1(prediction: str, gold: str) -> float:
    """Unigram F1 between normalised word multisets (ConvAI2's F1)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def segments(ids: Sequence[int], eos_id: int) -> list[list[int]]:
    """Runs of non-eos tokens (the original's ``filter_turn_indices``)."""
    out, current = [], []
    for i in ids:
        if i == eos_id:
            if current:
                out.append(current)
            current = []
        else:
            current.append(i)
    if current:
        out.append(current)
    return out


def teacher_forced_f1(predicted: Sequence[int], gold: Sequence[int], eos_id: int) -> float:
    """The original's per-example F1 of argmax predictions against gold ids.

    Where the original averages an empty list (a prediction that is all eos) and gets NaN, this returns 0.
    """
    pred_segments, gold_segments = segments(predicted, eos_id), segments(gold, eos_id)
    n = min(len(pred_segments), len(gold_segments))
    if n == 0:
        return 0.0
    scores = []
    for p, g in zip(pred_segments[:n], gold_segments[:n]):
        hits = len(set(p) & set(g))
        precision, recall = hits / len(p), hits / len(g)
        scores.append(2 * precision * recall / (precision + recall + 1e-3))
    return sum(scores) / n


def distinct_n(texts: Sequence[str], n: int) -> float:
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


# ---- scoring --------------------------------------------------------------------------------------------------------

@dataclass
class Targets:
    """The (dialogue, speaker) pairs to evaluate, as examples in one model's format."""

    dialogues: list[Dialogue]
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (dialogue index, speaker)

    @classmethod
    def of(cls, dialogues: Sequence[Dialogue]) -> Targets:
        pairs = [(i, s) for i, d in enumerate(dialogues) for s in (1, 2) if d.facts(s) and len(d.turns) >= s]
        return cls(list(dialogues), pairs)

    def facts(self, pair: int) -> list[str]:
        dialogue, speaker = self.pairs[pair]
        return self.dialogues[dialogue].facts(speaker)

    def words(self, pair: int, turn: int) -> int:
        """Whitespace words of a gold turn (per-word perplexity)."""
        return len(self.dialogues[self.pairs[pair][0]].turns[turn].split())


def examples_for(targets: Targets, fmt: PromptFormat, max_length: int) -> list[tuple[int, Example]]:
    """(pair index, example) for every pair: the speaker's persona, the dialogue, loss on the speaker's turns."""
    out = []
    for n, (d, speaker) in enumerate(targets.pairs):
        dialogue = targets.dialogues[d]
        persona = dialogue.facts(speaker)
        only = Dialogue(dialogue.turns, persona if speaker == 1 else [], persona if speaker == 2 else [])
        out += [(n, e) for e in persona_examples(only, fmt, max_length)]
    return out


def perplexities(scores: Sequence[TurnScore]) -> dict[str, float]:
    total = sum(sum(t.nll) for t in scores)
    tokens = sum(len(t.nll) for t in scores)
    words = sum(t.words for t in scores)
    # the original scores labels=turn: the turn's first token is not predicted (except in the opening turn)
    per_example = [sum(t.nll[1:]) / len(t.nll[1:]) if t.turn and len(t.nll) > 1 else sum(t.nll) / len(t.nll)
                   for t in scores]
    return {"ppl_token": math.exp(total / tokens), "ppl_word": math.exp(total / words),
            "ppl_orig": math.exp(sum(per_example) / len(per_example))}


def original_tf_f1(scores: Sequence[TurnScore], eos_id: int) -> float:
    values = []
    for t in scores:
        skip = 1 if t.turn else 0
        values.append(teacher_forced_f1(t.predicted[skip:], t.gold[skip:], eos_id))
    return sum(values) / len(values)


def persona_hits(rankings: Sequence[torch.Tensor]) -> dict[str, float]:
    """Hits@1 from per-conversation [candidates, scored turns] log-likelihoods whose row 0 is the true persona:
    per response, and summed over the conversation. Ties count as misses."""
    per_response, per_conversation = [], []
    for scores in rankings:
        if scores.numel() == 0:
            continue
        per_response += (scores[0:1] > scores[1:]).all(0).tolist()
        totals = scores.sum(1)
        per_conversation.append(bool((totals[0] > totals[1:]).all()))
    return {"hits1_response": sum(per_response) / len(per_response),
            "hits1_conversation": sum(per_conversation) / len(per_conversation)}


def rank_true_personas(model, fmt: PromptFormat, targets: Targets, distractors: Sequence[Sequence[list[str]]],
                       progress=None) -> list[torch.Tensor]:
    """For each pair: [1 + distractors, scored turns] log-likelihoods of the speaker's gold turns, row 0 the true
    persona, from :func:`~personagpt.scoring.rank_personas` (one batched pass per conversation)."""
    out = []
    for n, (d, speaker) in enumerate(targets.pairs):
        candidates = [targets.facts(n)] + list(distractors[n])
        ranker = rank_personas(model, fmt, candidates, targets.dialogues[d].turns, speaker)
        out.append(torch.stack(ranker.turn_scores, 1) if ranker.turn_scores else torch.zeros(len(candidates), 0))
        if progress is not None:
            progress(1)
    return out


def distractor_personas(targets: Targets, count: int, seed: int, pool: Targets | None = None) -> list[list[list[str]]]:
    """For each pair, up to ``count`` personas of ``pool`` (default: ``targets``) that belong to neither speaker
    of the pair's dialogue; a fixed draw per seed. Fewer come back only when the pool has fewer."""
    pool = pool or targets
    profiles = distinct_personas(pool.facts(m) for m in range(len(pool.pairs)))
    rng = random.Random(seed)
    draws = []
    for d, _ in targets.pairs:
        own = {tuple(targets.dialogues[d].p1_facts), tuple(targets.dialogues[d].p2_facts)}
        others = [p for p in profiles if p not in own]
        draws.append([list(p) for p in rng.sample(others, min(count, len(others)))])
    return draws


def generate_replies(model, fmt: PromptFormat, targets: Targets, sampling: SamplingConfig, batch_size: int = 16,
                     progress=None) -> tuple[list[str], list[str]]:
    """Generated and gold replies for every target response (context: persona prefix + gold history).

    Conversations are replayed with one KV cache each (``generate_replays``); beam search, and the rare
    conversation too long for the context window, re-encode each context instead (oldest turns dropped to fit).
    """
    if sampling.num_candidates > 1:
        return _best_of_n_replies(model, fmt, targets, sampling, progress)
    limit = context_limit(model)
    replays, gold = [], []
    for dialogue_index, speaker in targets.pairs:
        dialogue = targets.dialogues[dialogue_index]
        reply_at = [t for t in range(len(dialogue.turns)) if dialogue.speaker_of(t) == speaker]
        replays.append(Replay(fmt.persona_prefix(dialogue.facts(speaker), speaker),
                              [fmt.utterance(t) for t in dialogue.turns], reply_at))
        gold += [dialogue.turns[t] for t in reply_at]
    fits = [sampling.num_beams == 1 and r.length() + sampling.max_new_tokens <= limit for r in replays]
    replayed = [i for i, f in enumerate(fits) if f]
    out: list[list[list[int]]] = [[[] for _ in r.reply_at] for r in replays]
    if replayed:
        chosen = [replays[i] for i in replayed]  # replayed on the fast path this CPU gets
        for i, replies in zip(replayed, generate_replays(fast_decoder(model), fmt, chosen, sampling, batch_size,
                                                         progress)):
            out[i] = replies
    rest = [(i, k, fit_context(r.prefix, r.turns[:t], limit - sampling.max_new_tokens))
            for i, r in enumerate(replays) if not fits[i] for k, t in enumerate(r.reply_at)]
    rest.sort(key=lambda job: -len(job[2]))  # similar lengths batch together
    for start in range(0, len(rest), batch_size):
        jobs = rest[start:start + batch_size]
        for (i, k, _), reply in zip(jobs, generate_batch(model, fmt, [ids for _, _, ids in jobs], sampling)):
            out[i][k] = reply
        if progress is not None:
            progress(len(jobs))
    return [fmt.decode(reply) for replies in out for reply in replies], gold


def _best_of_n_replies(model, fmt: PromptFormat, targets: Targets, sampling: SamplingConfig, progress=None):
    """Best-of-N replies, one conversation rebuilt per target turn (each turn samples and scores N candidates)."""

    replies, gold = [], []
    for dialogue_index, speaker in targets.pairs:
        dialogue = targets.dialogues[dialogue_index]
        for t in range(len(dialogue.turns)):
            if dialogue.speaker_of(t) != speaker:
                continue
            conversation = Conversation.from_turns(model, fmt, dialogue.turns[:t], persona=dialogue.facts(speaker),
                                                   speaker=speaker, sampling=sampling, seed=t)
            replies.append(conversation.respond())
            gold.append(dialogue.turns[t])
            if progress is not None:
                progress(1)
    return replies, gold


DECODING = {
    "greedy": SamplingConfig(do_sample=False, max_new_tokens=32),
    "sample": SamplingConfig(do_sample=True, top_k=10, top_p=0.92, max_new_tokens=32),
    "beam": SamplingConfig(do_sample=False, num_beams=4, max_new_tokens=32),
}


def evaluate(model, fmt: PromptFormat, dialogues: Sequence[Dialogue], *, decode: str = "greedy",
             distractors: int = 19, batch_size: int = 8, seed: int = 0,
             metrics: Sequence[str] = ("ppl", "f1", "hits", "control"), control_contexts: int = 50,
             progress: bool = True, precision: str = "auto", hits_dialogues: int | None = None,
             distractor_pool: Sequence[Dialogue] | None = None, candidates: int = 1) -> dict:
    """All metrics for one model on ``dialogues``; see the module docstring for definitions.

    ``precision`` (auto, no, bf16, fp16) sets the autocast of the model's matmuls; see ``inference_autocast``.
    ``hits_dialogues`` limits persona identification (1 + ``distractors`` teacher-forced passes) to the first N
    dialogues; their distractors are drawn from ``distractor_pool`` (default: all of ``dialogues``), e.g. the whole
    split when only its first dialogues are evaluated. ``candidates`` > 1 generates F1's and control's replies best-of-N
    (:mod:`personagpt.generate.best_of_n`; one conversation per reply, much slower than the batched replay).
    """
    if decode not in DECODING:
        raise SettingsError(f"decode must be one of {', '.join(DECODING)}")
    started = time.perf_counter()
    targets = Targets.of(dialogues)
    if not targets.pairs:
        raise SettingsError("no dialogue with a known persona to evaluate")
    max_length = min(1024, context_limit(model))
    results: dict = {"conversations": len(targets.pairs), "precision": resolve_mixed_precision(precision)}
    model.eval()
    autocast = inference_autocast(model, precision)
    if "ppl" in metrics or "hits" in metrics:
        examples = examples_for(targets, fmt, max_length)
        # pairs are in dialogue order, so the ranked pairs are the first pairs of targets
        ranked = Targets.of(dialogues[:hits_dialogues]) if hits_dialogues else targets
        runs = len(ranked.pairs) if "hits" in metrics else 0
        bar = tqdm(total=len(examples), desc="perplexity (teacher forcing)", unit="seq", disable=not progress)
        with autocast:
            true_scores = score_examples(model, fmt, examples, targets.words, batch_size, bar.update)
        results["responses"] = len(true_scores)
        results |= perplexities(true_scores)
        results["tf_f1"] = 100 * original_tf_f1(true_scores, fmt.eos_id)
        bar.close()
        if "hits" in metrics:  # each conversation ranks all its candidate personas: far slower per item
            bar = tqdm(total=runs, desc=f"Hits@1 ({distractors + 1} personas each)", unit="conversation",
                       disable=not progress)
            with autocast:
                drawn = distractor_personas(ranked, distractors, seed, pool=Targets.of(distractor_pool or dialogues))
                rankings = rank_true_personas(model, fmt, ranked, drawn, bar.update)
            results |= {k: 100 * v for k, v in persona_hits(rankings).items()}
            results["distractors"] = min(len(d) for d in drawn)
            results["hits_conversations"] = len(ranked.pairs)
        bar.close()
    if "f1" in metrics or "control" in metrics:  # one generation copy (bf16 on a CPU) serves both
        generator, generator_autocast = generation_model(model, precision)
    if "f1" in metrics:
        total = sum(1 for d, s in targets.pairs for t in range(len(targets.dialogues[d].turns))
                    if targets.dialogues[d].speaker_of(t) == s)
        bar = tqdm(total=total, desc=f"generating ({decode})", unit="reply", disable=not progress)
        with generator_autocast:  # decoding steps are cheap per row: batch 8x wider than scoring
            sampling = replace(DECODING[decode], num_candidates=candidates)
            replies, gold = generate_replies(generator, fmt, targets, sampling, batch_size * 8, bar.update)
        bar.close()
        results["f1"] = 100 * sum(word_f1(r, g) for r, g in zip(replies, gold)) / len(gold)
        if candidates > 1:
            results["candidates"] = candidates
        results["distinct_1"] = distinct_n(replies, 1)
        results["distinct_2"] = distinct_n(replies, 2)
        results["samples"] = [{"gold": g, "generated": r} for r, g in list(zip(replies, gold))[:5]]
    if "control" in metrics:

        control = control_success(generator, fmt, dialogues, GoalLabeler(), contexts=control_contexts,
                                  batch_size=batch_size * 8, seed=seed, progress=progress, precision=precision,
                                  candidates=candidates)
        results["control_success"] = 100 * control["overall"]["success"]
        results["control_base_rate"] = 100 * control["overall"]["base_rate"]
        results["control"] = control
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


COLUMNS = [("ppl_token", "PPL/token", "{:.2f}"), ("ppl_word", "PPL/word", "{:.2f}"), ("ppl_orig", "PPL (orig)", "{:.2f}"),
           ("tf_f1", "tf-F1", "{:.1f}"), ("f1", "F1", "{:.2f}"), ("distinct_1", "Dist-1", "{:.3f}"),
           ("distinct_2", "Dist-2", "{:.3f}"), ("hits1_response", "Hits@1 resp", "{:.1f}"),
           ("hits1_conversation", "Hits@1 conv", "{:.1f}"), ("control_success", "Control", "{:.1f}"),
           ("control_base_rate", "Control base", "{:.1f}"), ("seconds", "Time (s)", "{:.0f}")]


def table_rows(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells, one row per model; columns only for metrics some row has. Every renderer
    (Markdown, terminal) draws these."""
    shown = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    header = ["Model"] + [h for _, h, _ in shown]
    cells = []
    for r in rows:
        if "error" in r:
            cells.append([r["model"]] + ["error" if i == 0 else "" for i in range(len(shown))])
        else:
            cells.append([r["model"]] + [fmt.format(r[key]) if key in r else "" for key, _, fmt in shown])
    return header, cells


def markdown_table(rows: Sequence[dict]) -> str:
    header, cells = table_rows(rows)
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


@dataclass(frozen=True)
class PersonaProbe:
    """A yes/no question about one of the bot's facts, asked as the partner's next turn (the probe set)."""

    index: int  # the dialogue's index in the list it came from
    turns: list[str]  # the gold history up to a random point, then the question
    persona: list[str]  # the bot's facts (p2's)
    fact: str
    expected: bool  # the answer the fact implies


def persona_probes(dialogues: Sequence[Dialogue], count: int, seed: int = 1) -> list[PersonaProbe]:
    """For each of the first ``count`` dialogues with an askable fact of p2's (:func:`personas.facts.question`),
    one such fact asked after the gold history up to a random even turn (one draw per dialogue, in order)."""
    rng = random.Random(seed)
    probes = []
    for i, d in enumerate(dialogues[:count]):
        askable = [f for f in d.p2_facts if question(f)]
        if not askable:
            continue
        fact = rng.choice(askable)
        asked, expected = question(fact)
        cut = rng.randrange(0, min(len(d.turns), 6) // 2 + 1) * 2
        probes.append(PersonaProbe(i, list(d.turns[:cut]) + [asked], list(d.p2_facts), fact, expected))
    return probes


def control_success(model, fmt, dialogues, labeler: GoalLabeler, goals: Sequence[str] = DEFAULT_ACTIONS,
                    contexts: int = 50, sampling=None, batch_size: int = 16, seed: int = 0,
                    progress: bool = True, precision: str = "auto", candidates: int = 1) -> dict[str, dict[str, float]]:
    """How often a steered turn fulfils its goal, against the rate without steering.

    For ``contexts`` validation contexts (a dialogue cut before a random turn), the model generates the next turn
    once per goal with the action prefix; the labeler judges each against its goal. The base rate of a goal is
    how often the model's unsteered next turn (the speaker's persona prefix, no action) fulfils it anyway.
    ``candidates`` > 1 generates every turn best-of-N (:mod:`personagpt.generate.best_of_n`: in goal mode the labeler's
    verdict is part of the score), one conversation at a time instead of batched.
    """
    cfg = sampling or SamplingConfig(do_sample=False, max_new_tokens=40)
    rng = random.Random(seed)
    eligible = [d for d in dialogues if len(d.turns) >= 2]
    picked = [(d, rng.randrange(1, len(d.turns))) for d in rng.sample(eligible, min(contexts, len(eligible)))]
    budget = context_limit(model) - cfg.max_new_tokens
    jobs = []  # (goal or None, prompt ids)
    sessions = []  # best-of-N: the same prompts as conversations
    for dialogue, cut in picked:
        turns = dialogue.turns[max(0, cut - HISTORY_TURNS):cut]
        history = [fmt.utterance(t) for t in turns]
        speaker, facts = dialogue.speaker_of(cut), dialogue.facts(dialogue.speaker_of(cut))
        jobs.append((None, fit_context(fmt.persona_prefix(facts, speaker), history, budget)))
        sessions.append(dict(turns=turns, persona=facts, speaker=speaker))
        for goal in goals:
            jobs.append((goal, fit_context(fmt.goal_prefix(goal), history, budget)))
            sessions.append(dict(turns=turns, goal=goal))
    replies = []
    with inference_autocast(model, precision):
        if candidates > 1:
            best_of_n = replace(cfg, num_candidates=candidates)
            for i, job in enumerate(tqdm(sessions, desc=f"control success (best of {candidates})", unit="turn",
                                         disable=not progress)):
                turns = job.pop("turns")
                replies.append(Conversation.from_turns(model, fmt, turns, sampling=best_of_n, seed=seed + i,
                                                       **job).respond())
        for start in tqdm(range(0, len(jobs) if candidates == 1 else 0, batch_size), desc="control success",
                          unit="batch", disable=not progress or candidates > 1):
            batch = [ids for _, ids in jobs[start:start + batch_size]]
            replies += [fmt.decode(r) for r in generate_batch(model, fmt, batch, cfg)]
    found = labeler.label_many(replies, goals)
    results = {}
    for goal in goals:
        steered = [goal in f for (g, _), f in zip(jobs, found) if g == goal]
        base = [goal in f for (g, _), f in zip(jobs, found) if g is None]
        results[goal] = {"success": sum(steered) / len(steered), "base_rate": sum(base) / len(base)}
    results["overall"] = {k: sum(results[g][k] for g in goals) / len(goals) for k in ("success", "base_rate")}
    return results
