"""What the ``personagpt auth`` commands do, as functions: the persona pools, loading what training made, the
policies by name, evaluation with resume, and calibration. The CLI only parses arguments and prints."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from personagpt.auth.identify import IdentifierHead, PooledEncoder, packaged_head_path
from personagpt.auth.interview import Episode, SelfPlay, candidate_sets, likelihood_identifiers, rescore, sample_sets
from personagpt.auth.learn import TurnEmbeddings, identification_hits, train_identifier_head
from personagpt.auth.plan import FEATURES as PLAN_FEATURES
from personagpt.auth.plan import (
    DistilledPolicy,
    Gated,
    OptionScorer,
    Planner,
    RandomQuestionPolicy,
    agreement,
    distill,
    packaged_distilled_path,
)
from personagpt.auth.policies import FEATURES as POLICY_FEATURES
from personagpt.auth.policies import LearnedPolicy, LookaheadPolicy, QNetwork, baseline_policies, packaged_policy_path
from personagpt.auth.report import claims, error_rates, hits_by_turn, paired_with, plot, roc_auc, threshold_for
from personagpt.auth.stores import play_resumable, play_stored, stored_interviews
from personagpt.control.selfplay import RandomPolicy
from personagpt.data.dialogues import (
    default_data_dir,
    distinct_personas,
    load_dialogues,
    load_personas,
    resolve_personas_path,
)
from personagpt.errors import SettingsError
from personagpt.generate.sampling import SamplingConfig

IDENTIFIERS = ("sentence", "exchange", "calibrated", "embedding", "likelihood")
GUIDES = ("sentence", "exchange", "calibrated", "embedding")  # the identifiers a policy can be guided by
POLICIES = ("random", "round-robin", "no-goal", "learned", "random-question", "planner", "distilled", "lookahead")
COSTLY = ("planner", "lookahead")  # simulate answers every turn: not run unless asked for


def validation_pool(data: Path | None = None) -> tuple[Path, list[list[str]]]:
    """The held-out personas interviewed by ``auth eval`` (default: the Persona-Chat validation split's)."""
    split = data or default_data_dir() / "personachat" / "valid_both_original_no_cands.txt"
    return split, distinct_personas(f for d in load_dialogues(split) for f in (d.p1_facts, d.p2_facts))


def training_personas(seed: int, held_out: int) -> tuple[list[list[str]], list[list[str]]]:
    """The packaged training personas, shuffled by ``seed``: (held out for calibration, the rest for training)."""
    personas = load_personas(resolve_personas_path())
    random.Random(seed).shuffle(personas)
    cut = max(held_out, 20)
    return personas[:cut], personas[cut:]


# ---- loading what training made -------------------------------------------------------------------------------------

def load_head(path: Path | None, model_name: str | None, required: bool = True):
    """The embedding identifier's head; without ``required``, None where there is none for this model."""
    chosen = path or packaged_head_path()
    if path is None and model_name is not None:
        if not required:
            return None
        raise SettingsError("the shipped identifier head fits the bundled model only; pass --identifier "
                            "(made by `personagpt auth train-identifier --model ...`)")
    if not chosen.is_file():
        raise SettingsError(f"{chosen}: no identifier head there (make one with `personagpt auth train-identifier`)")
    try:
        return IdentifierHead.load(chosen)
    except Exception as e:  # a corrupt or foreign file
        raise SettingsError(f"{chosen}: not an identifier head ({type(e).__name__})") from None


def _saved_module(path: Path | None, shipped: Path, cls, what: str, current: int, redo: str):
    """A small saved network at ``path``, else the shipped one, else None; a missing, unreadable or outdated file
    (its ``features`` not ``current``) says so and how to make another."""
    chosen = path or shipped
    if not chosen.is_file():
        if path is not None:
            raise SettingsError(f"{path}: no such {what} file")
        return None
    try:
        module = cls.load(chosen)
    except Exception as e:  # a corrupt or foreign file
        raise SettingsError(f"{chosen}: not a {what} file ({type(e).__name__})") from None
    if module.config["features"] != current:
        raise SettingsError(f"{chosen}: made by another PersonaGPT version (a state of {module.config['features']} "
                            f"features, now {current}); {redo}")
    return module


def load_policy_network(path: Path | None):
    """The DQN policy (``auth train``) at ``path``, else the shipped one, else None."""
    return _saved_module(path, packaged_policy_path(), QNetwork, "policy", POLICY_FEATURES,
                         "train a new one with `personagpt auth train`")


def load_distilled(path: Path | None):
    """The distilled question policy (``auth distill``) at ``path``, else the shipped one, else None."""
    scorer = _saved_module(path, packaged_distilled_path(), OptionScorer, "distilled policy", PLAN_FEATURES,
                           "run `personagpt auth distill` again")
    return scorer.eval() if scorer is not None else None


def load_thresholds(path: Path | None, k: int) -> tuple[dict, str | None]:
    """({identifier: {turn: threshold}} calibrated for this K, or {}; a note saying why there are none)."""
    chosen = path or packaged_head_path().with_name("thresholds.json")
    if not chosen.is_file():
        if path is not None:
            raise SettingsError(f"{path}: no such thresholds file")
        return {}, None
    try:
        saved = json.loads(chosen.read_text())
        if saved["k"] != k:
            return {}, f"{chosen} was calibrated for K = {saved['k']}, not {k}; no error rates."
        return saved.get("by_identifier") or {saved["identifier"]: saved["by_turn"]}, None
    except (ValueError, KeyError, TypeError):
        raise SettingsError(f"{chosen}: not a thresholds file from `personagpt auth train`") from None


def make_policy(name: str, env: SelfPlay, seed: int = 0, network=None, distilled=None):
    """A policy by its ``auth eval`` name, with the guide identifier it must be run with (None: the default)."""
    baselines = baseline_policies(seed)
    if name in baselines:
        return baselines[name], None
    if name == "learned":
        if network is None:
            raise SettingsError("no learned policy is shipped; train one with `personagpt auth train` and pass "
                                "--policy-path")
        return LearnedPolicy(network), network.guide
    if name == "lookahead":
        return LookaheadPolicy(), None
    if env.facts is None:
        raise SettingsError(f"the {name} policy needs the sentence encoder")
    # the question policies open with random's goals until the likeliest candidates hold half the mass (plan.Gated),
    # then read each yes or no by what it is worth from this partner (the calibrated identifier)
    if name == "planner":
        return Gated(Planner(env.facts), seed=seed), "calibrated"
    if name == "random-question":
        return Gated(RandomQuestionPolicy(env.facts, seed=seed), seed=seed), "calibrated"
    if name == "distilled":
        if distilled is None:
            raise SettingsError("no distilled policy is shipped; make one with `personagpt auth distill` and pass "
                                "--distilled")
        return Gated(DistilledPolicy(distilled, env.facts), seed=seed), "calibrated"
    raise SettingsError(f"unknown policy {name}; use {', '.join(POLICIES)}")


def _once(tick: Callable[[], None] | None, shown: dict[str, int], name: str) -> Callable[[], None] | None:
    """A progress tick that counts each interview once, though every chunk reads the earlier ones back."""
    if tick is None:
        return None
    seen = 0

    def step() -> None:
        nonlocal seen
        seen += 1
        if seen > shown[name]:
            shown[name] = seen
            tick()
    return step


def _measure(played: dict[str, list[Episode]], guides: dict[str, str | None], turns: int, seed: int, calibrated: dict,
             new: dict[str, int], seconds: dict[str, float]) -> tuple[dict, dict]:
    """Per policy Hits@1 by turn and verification per identifier, and the paired differences with random."""
    results = {}
    for name, episodes in played.items():
        results[name] = {"guide": guides[name], "by_turn": {}, "verification": {},
                         "played": {"interviews": new[name], "seconds": round(seconds[name], 1)}}
        for ident in IDENTIFIERS:
            scored = [e for e in episodes if e.scores.get(ident)]
            if not scored:
                continue
            results[name]["by_turn"][ident] = hits_by_turn(scored, ident)
            for t in sorted({min(4, turns), turns}):
                scores, genuine = claims(scored, ident, t, seed)
                row = {"interviews": len(scored), "auc": roc_auc(scores, genuine)}
                if str(t) in calibrated.get(ident, {}):
                    row |= {"threshold": calibrated[ident][str(t)],
                            **error_rates(scores, genuine, calibrated[ident][str(t)])}
                results[name]["verification"][f"{ident}@{t}"] = row
    return results, paired_with(played, "random")


def evaluate(env: SelfPlay, sets: Sequence[tuple[list[list[str]], int]], policies: dict[str, tuple[object, str | None]],
             out: Path, seed: int = 0, likelihood: int = 0, calibrated: dict | None = None,
             progress: Callable[[str, int], Callable[[], None]] | None = None, meta: dict | None = None,
             chunk: int | None = None) -> dict:
    """Interview every set with each policy (the same personas and distractors), score with every identifier,
    and write ``out/results.json`` (interviews resume from ``out/episodes-<policy>.jsonl``). The sets are played
    ``chunk`` at a time (default: the environment's workers), every policy on a chunk before the next, and the
    results are written after each: a run stopped early has paired figures over the interviews it finished. Each
    policy's ``played`` (interviews played and their seconds) adds up over the runs resumed into ``out``, as far as
    their chunks finished. A policy measured in ``out`` before but not asked for now stays in ``results.json``:
    measured again from its interviews where ``out`` holds all of this run's, carried over as it was otherwise.
    Returns {"results": per policy measured now, Hits@1 by turn and verification, "paired_vs_random": ...,
    "plots": ..., "carried": the policies carried over}."""
    calibrated = calibrated or {}
    # how the partner answered and how the replies were computed: interviews played otherwise are not resumed
    settings = {"partner_candidates": env.partner_candidates, "decoding": env.decoding}
    before = out / "results.json"
    stored = json.loads(before.read_text()) if before.is_file() else {}
    previous = stored.get("results", {})
    if stored:
        for key, default in (("partner_candidates", 1), ("decoding", "fast")):
            was = stored.get(key, default)
            if was != settings[key]:
                raise SettingsError(f"the interviews in {out} were played with {key.replace('_', ' ')} {was}; "
                                    f"resume with that or choose another output directory")
        for name, (_, guide) in policies.items():
            old = previous.get(name, {"guide": guide})["guide"]
            if old != guide:
                raise SettingsError(f"the {name} interviews in {out} were guided by the {old} identifier, not the "
                                    f"{guide}; choose another output directory")
    ticks = {name: progress(name, len(sets)) if progress else None for name in policies}
    shown = dict.fromkeys(policies, 0)
    # the policies measured before but not asked for now: their stored interviews, read once
    others = {name: stored_interviews(env, sets, out / f"episodes-{name}.jsonl") for name in previous
              if name not in policies}
    guides = {name: guide for name, (_, guide) in policies.items()} | {name: previous[name]["guide"] for name in others}
    # play time adds up over the runs that resumed into ``out`` (a rerun that reads every interview back adds ~0)
    earlier = {name: previous.get(name, {}).get("played", {}) for name in guides}
    seconds = {name: float(earlier[name].get("seconds", 0.0)) for name in guides}
    new = {name: int(earlier[name].get("interviews", 0)) for name in guides}
    chunk = chunk or env.workers
    for end in range(min(chunk, len(sets)), len(sets) + chunk, chunk):
        end = min(end, len(sets))
        played = {}
        for name, (policy, guide) in policies.items():
            started = time.perf_counter()
            episodes, now = play_resumable(env, sets[:end], policy, seed, guide, out / f"episodes-{name}.jsonl",
                                           _once(ticks[name], shown, name))
            seconds[name] += time.perf_counter() - started
            new[name] += now
            if likelihood and end == len(sets):
                rescore(episodes[:likelihood], "likelihood",
                        likelihood_identifiers(env.model, env.fmt)["likelihood"])
            played[name] = episodes
        carried = {}
        for name, kept_episodes in others.items():
            if all(i in kept_episodes for i in range(end)):
                played[name] = [kept_episodes[i] for i in range(end)]
            else:
                carried[name] = previous[name]
        results, paired = _measure(played, guides, env.turns, seed, calibrated, new, seconds)
        kept = {key: rows for key, rows in stored.get("paired_vs_random", {}).items() if key.split(" - ")[0] in carried}
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({**(meta or {}), **settings, "interviews": end,
                                                      "results": results | carried, "paired_vs_random": paired | kept},
                                                     indent=1))
        if end == len(sets):
            break

    plots = []
    for ident in IDENTIFIERS:
        table = {name: r["by_turn"][ident] for name, r in results.items() if ident in r["by_turn"]}
        if table:
            plots.append(plot(table, out / f"hits_by_turn_{ident}.png", 1 / len(sets[0][0])))
    return {"results": results, "paired_vs_random": paired, "plots": plots, "carried": sorted(carried)}


def calibrate(env: SelfPlay, policy, guide: str, truths, pool, candidates: int, false_accept: float, seed: int,
              path: Path, progress: Callable[[], None] | None = None) -> dict:
    """Accept thresholds per turn for every identifier, from interviews of ``truths`` (held out from training) run
    by ``policy``: for each turn, the lowest claim probability that keeps false accepts at most ``false_accept``."""
    sets = candidate_sets(truths, pool, candidates, seed + 7)
    episodes = env.play(sets, policy, seed + 7, (lambda *_: progress()) if progress else None, guide)
    thresholds = {name: {str(t): threshold_for(*claims(episodes, name, t, seed), false_accept)
                         for t in range(1, env.turns + 1)} for name in env.identifiers}
    saved = {"identifier": guide, "k": candidates, "false_accept": false_accept, "interviews": len(episodes),
             "by_turn": thresholds[guide], "by_identifier": thresholds}
    path.write_text(json.dumps(saved, indent=1))
    return saved


def calibrate_distilled(env: SelfPlay, scorer, count: int, candidates: int, false_accept: float, seed: int, path: Path,
                        progress: Callable[[], None] | None = None) -> dict:
    """:func:`calibrate` for the distilled policy as ``auth eval`` plays it (gated, guided by the calibrated
    identifier), on ``count`` of the training personas its planner's interviews left out."""
    held, pool = training_personas(seed, 200)
    return calibrate(env, Gated(DistilledPolicy(scorer, env.facts), seed=seed), "calibrated", held[:count], held + pool,
                     candidates, false_accept, seed, path, progress)


def distillation_data(env: SelfPlay, interviews: int, candidates: int, seed: int, store: Path,
                      progress: Callable[[], None] | None = None) -> list[dict]:
    """The planner's decisions over ``interviews`` self-play interviews of training personas (kept in ``store``,
    one JSON line per interview, so a stopped run resumes); the turns its gate gives to random goals are not
    decisions."""
    _, pool = training_personas(seed, 200)
    sets = sample_sets(pool, min(interviews, len(pool)), candidates, seed + 11)

    class Recording:
        """The planner, its decisions kept per interview (interviews run in threads)."""

        def __init__(self) -> None:
            self.by_thread: dict[int, list] = {}

        def choose(self, view):
            record = self.by_thread.setdefault(threading.get_ident(), [])
            if view.turn == 0:
                record.clear()
            return Gated(Planner(env.facts, record=record), seed=seed).choose(view)  # as `auth eval` plays it

    # decisions made against another partner, read by another guide or decoded otherwise are not resumed
    settings = {"partner_candidates": env.partner_candidates, "guide": "calibrated", "decoding": env.decoding}
    kept = store.with_name("settings.json")
    if store.is_file():
        was = {"partner_candidates": 1, "guide": "exchange", "decoding": "fast"}  # before settings were kept
        was |= json.loads(kept.read_text()) if kept.is_file() else {}
        if was != settings:
            raise SettingsError(f"the decisions in {store.parent} were made with {was}, not {settings}; choose another "
                                f"output directory")
    store.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(settings))
    recording = Recording()
    decisions, _ = play_stored(env, sets, recording, seed + 11, settings["guide"], store, progress, "decisions",
                                lambda *_: list(recording.by_thread.get(threading.get_ident(), [])),
                                lambda _, value: value)
    return [d for i in sorted(decisions) for d in decisions[i]]


# ---- the embedding identifier ---------------------------------------------------------------------------------------

def identifier_selfplay(model, fmt, count: int, turns: int, max_new_tokens: int, workers: int, seed: int,
                        store: Path, progress: Callable[[], None] | None = None) -> list[Episode]:
    """``count`` random-goal interviews of training personas (two candidates each: the answers do not depend on
    them) for the identifier head to learn from, kept in ``store`` and read back from it when it exists."""
    episodes = [Episode.from_json(e) for e in json.loads(store.read_text())][:count] if store.is_file() else []
    if len(episodes) < count:
        _, pool = training_personas(seed, 200)
        sets = sample_sets(pool, count, 2, seed + 1)[len(episodes):]
        env = SelfPlay(model, fmt, None, turns, SamplingConfig(max_new_tokens=max_new_tokens), workers,
                       sentence=False)  # scored later by the head being trained
        try:
            episodes += env.play(sets, RandomPolicy(seed=seed), seed, (lambda *_: progress()) if progress else None)
        finally:
            env.close()
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps([e.to_json() for e in episodes]))
    return episodes


def train_identifier(model, fmt, dialogues, episodes: Sequence[Episode], steps: int, seed: int,
                     encoded: Callable[[int], None] | None = None,
                     trained: Callable[[int, float], None] | None = None):
    """Train the embedding identifier's head on the dialogues' p2 turns (and the self-play ``episodes``), 10% of
    the personas held out; returns (head, {held-out set: Hits@1 of 20 after 1, 4 and 7 turns}, training personas)."""
    personas = list(dict.fromkeys(tuple(d.p2_facts) for d in dialogues if d.p2_facts))
    if len(personas) < 40:
        raise SettingsError(f"{len(personas)} personas with turns; training needs at least 40")
    held = set(random.Random(seed).sample(personas, max(20, len(personas) // 10)))
    encoder = PooledEncoder(model, fmt)
    cut = len(episodes) - len(episodes) // 10
    train = TurnEmbeddings.encode(encoder, [d for d in dialogues if tuple(d.p2_facts) not in held], encoded)
    valid = {"gold": TurnEmbeddings.encode(encoder, [d for d in dialogues if tuple(d.p2_facts) in held], encoded)}
    if episodes:
        train = train + TurnEmbeddings.from_episodes(encoder, episodes[:cut], encoded)
    if episodes[cut:]:
        valid["self-play"] = TurnEmbeddings.from_episodes(encoder, episodes[cut:], encoded)
    head = train_identifier_head(train, steps, seed=seed, progress=trained)
    report = {name: {f"hits1_at_{t}": identification_hits(head, v, k=20, turns=t) for t in (1, 4, 7)}
              for name, v in valid.items() if len(v.personas) >= 20}
    return head, report, len(train.personas)


def warm_start_episodes(path: Path, env: SelfPlay, guide: str, pool, candidates: int, seed: int,
                        progress: Callable[[int], None] | None = None) -> list[Episode]:
    """Self-play interviews from ``auth train-identifier --selfplay`` as DQN warm-start data: each gets K
    candidates drawn afresh (the answers do not depend on them), scored by the ``guide`` identifier."""
    if not path.is_file():
        raise SettingsError(f"{path}: no such file")
    try:
        warm = [Episode.from_json(e) for e in json.loads(path.read_text())]
    except (ValueError, KeyError, TypeError):
        raise SettingsError(f"{path}: not a self-play file from `auth train-identifier`") from None
    warm = [e for e in warm if len(e.candidates) >= 2]
    for e, (c, t) in zip(warm, candidate_sets([e.candidates[e.truth] for e in warm], pool, candidates, seed + 3)):
        e.candidates, e.truth = c, t
    rescore(warm, guide, env.identifiers[guide], progress)
    return warm


def distill_policy(decisions: Sequence[dict], steps: int, seed: int, out: Path,
                   progress: Callable[[int, float], None] | None = None) -> dict:
    """Fit the distilled policy on 90% of the planner's decisions, report its agreement with the planner on the
    rest, and write ``out/distilled.pt`` and ``out/distill.json``."""
    cut = len(decisions) - len(decisions) // 10
    try:
        scorer = distill(decisions[:cut], steps, seed, progress=progress)
    except ValueError as e:
        raise SettingsError(str(e)) from None
    report = {"decisions": len(decisions), "steps": steps, "held_out_decisions": len(decisions) - cut,
              "held_out_agreement": agreement(scorer, decisions[cut:])}
    out.mkdir(parents=True, exist_ok=True)
    scorer.save(out / "distilled.pt")
    (out / "distill.json").write_text(json.dumps(report, indent=1))
    return report
