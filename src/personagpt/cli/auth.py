"""``personagpt auth ...``: persona authentication (an interviewer finds out who it is talking to)."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from personagpt.cli.common import UserError, friendly_errors, load
from personagpt.cli.options import DeviceOpt, ModelOpt

app = typer.Typer(help="Persona authentication: interviews that identify who the partner is.", no_args_is_help=True,
                  rich_markup_mode=None)

TurnsOpt = Annotated[int, typer.Option(min=1, help="Exchanges per interview.")]
KOpt = Annotated[int, typer.Option("-k", "--candidates", min=2, help="Candidate personas (true + distractors).")]
MaxNewOpt = Annotated[int, typer.Option("--max-new-tokens", min=1, help="Longest turn.")]
SeedOpt = Annotated[int, typer.Option(help="Seed for personas, distractors and sampling.")]
IdentifierOpt = Annotated[Optional[Path], typer.Option(
    "--identifier", help="Embedding identifier head (default: the one shipped for the bundled model; "
                         "`auth train-identifier` makes one for another model).")]
ThresholdsOpt = Annotated[Optional[Path], typer.Option(
    help="thresholds.json from `auth train` (default: the shipped one): the accept threshold per turn.")]
GuideOpt = Annotated[str, typer.Option(
    help="The identifier the policy sees and is rewarded by: sentence (persona facts against the answers under a "
         "sentence encoder; no training) or embedding (the trained head over the dialogue model's hidden states).")]
IDENTIFIERS = ("sentence", "embedding", "likelihood")
PolicyPathOpt = Annotated[Optional[Path], typer.Option(
    "--policy-path", help="Learned policy (policy.pt from `auth train`; default: the one shipped, if any).")]


def _head(path: Path | None, model_name: str | None, required: bool = True):
    """The embedding identifier's head; without ``required``, None where there is none for this model."""
    from personagpt.auth.identify import IdentifierHead, packaged_head_path

    chosen = path or packaged_head_path()
    if path is None and model_name is not None:
        if not required:
            return None
        raise UserError("the shipped identifier head fits the bundled model only; pass --identifier "
                        "(made by `personagpt auth train-identifier --model ...`)")
    if not chosen.is_file():
        raise UserError(f"{chosen}: no identifier head there (make one with `personagpt auth train-identifier`)")
    try:
        return IdentifierHead.load(chosen)
    except Exception as e:  # a corrupt or foreign file
        raise UserError(f"{chosen}: not an identifier head ({type(e).__name__})") from None


def _policy_network(path: Path | None):
    from personagpt.auth.policies import FEATURES, QNetwork, packaged_policy_path

    chosen = path or packaged_policy_path()
    if not chosen.is_file():
        if path is not None:
            raise UserError(f"{path}: no such policy file")
        return None
    try:
        network = QNetwork.load(chosen)
    except Exception as e:
        raise UserError(f"{chosen}: not a policy file ({type(e).__name__})") from None
    if network.config["features"] != FEATURES:
        raise UserError(f"{chosen}: made by an older PersonaGPT (a state of {network.config['features']} features, "
                        f"now {FEATURES}); train a new one with `personagpt auth train`")
    return network


def _pool(data: Path | None) -> tuple[Path, list[list[str]]]:
    from personagpt.data import default_data_dir, distinct_personas, load_dialogues

    split = data or default_data_dir() / "personachat" / "valid_both_original_no_cands.txt"
    return split, distinct_personas(f for d in load_dialogues(split) for f in (d.p1_facts, d.p2_facts))


def _training_personas(seed: int, held_out: int) -> tuple[list[list[str]], list[list[str]]]:
    """The packaged training personas, shuffled by ``seed``: (held out for calibration, the rest for training)."""
    import random

    from personagpt.data import load_personas, resolve_personas_path

    personas = load_personas(resolve_personas_path())
    random.Random(seed).shuffle(personas)
    cut = max(held_out, 20)
    return personas[:cut], personas[cut:]


@app.command("train-identifier")
def train_identifier(
    model: ModelOpt = None,
    data: Annotated[Optional[Path], typer.Option(help="Training dialogues (default: the Persona-Chat training split).")] = None,
    dialogues: Annotated[Optional[int], typer.Option(min=10, help="Use only the first N dialogues.")] = None,
    selfplay: Annotated[int, typer.Option(min=0, help="Also learn from N self-play interviews (random goals, training "
                                                      "personas): the partner answers as it will in `auth train`/`eval`.")] = 0,
    selfplay_file: Annotated[Optional[Path], typer.Option(help="Keep the self-play interviews here (read back "
                                                               "instead of replaying when it exists; default: next to --out).")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Training steps (batches of 256 dialogues; more overfits: held-out Hits@1 after 4 turns 36% at 150-400 steps, 30% at 1500).")] = 300,
    turns: TurnsOpt = 8,
    max_new_tokens: MaxNewOpt = 32,
    workers: Annotated[int, typer.Option(min=1, help="Self-play interviews run side by side.")] = 32,
    out: Annotated[Path, typer.Option(help="Where to write the head.")] = Path("runs/auth/identifier.pt"),
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
) -> None:
    """Train the embedding identifier: a small head over the dialogue model's pooled hidden states, so that a
    summary of someone's turns lands nearest their persona (InfoNCE). 10% of the personas are held out to report
    Hits@1 of 20 after 1, 4 and 7 turns (gold dialogues, and self-play when used)."""
    with friendly_errors():
        import random

        from tqdm.auto import tqdm

        from personagpt.auth.env import Episode, SelfPlay, candidate_sets
        from personagpt.auth.identify import PooledEncoder
        from personagpt.auth.learn import TurnEmbeddings, identification_hits, train_identifier_head
        from personagpt.data import default_data_dir, load_dialogues
        from personagpt.selfplay import RandomPolicy

        split = data or default_data_dir() / "personachat" / "train_self_partial_no_cands.txt"
        everything = load_dialogues(split)[:dialogues]
        personas = list(dict.fromkeys(tuple(d.p2_facts) for d in everything if d.p2_facts))
        if len(personas) < 40:
            raise UserError(f"{split}: {len(personas)} personas with turns; training needs at least 40")
        held = set(random.Random(seed).sample(personas, max(20, len(personas) // 10)))
        loaded, fmt = load(model, device)
        loaded.eval()
        episodes = []
        if selfplay:
            store = selfplay_file or out.with_name("selfplay.json")
            if store.is_file():
                episodes = [Episode.from_json(e) for e in json.loads(store.read_text())][:selfplay]
            if len(episodes) < selfplay:
                from personagpt.sampling import SamplingConfig

                _, pool = _training_personas(seed, 200)
                truths = random.Random(seed + 1).sample(pool, selfplay)
                sets = candidate_sets(truths, pool, 2, seed + 1)[len(episodes):]
                env = SelfPlay(loaded, fmt, None, turns, SamplingConfig(max_new_tokens=max_new_tokens), workers,
                               sentence=False)  # scored later by the head being trained
                bar = tqdm(total=len(sets), desc="self-play", unit="interview")
                try:
                    episodes += env.play(sets, RandomPolicy(seed=seed), seed, lambda _: bar.update(1))
                finally:
                    env.close()
                    bar.close()
                store.parent.mkdir(parents=True, exist_ok=True)
                store.write_text(json.dumps([e.to_json() for e in episodes]))
        encoder = PooledEncoder(loaded, fmt)
        cut = len(episodes) - len(episodes) // 10
        bar = tqdm(total=len(everything) + len(episodes), desc="encoding turns", unit="dialogue")
        train = TurnEmbeddings.encode(encoder, [d for d in everything if tuple(d.p2_facts) not in held], bar.update)
        valid = {"gold": TurnEmbeddings.encode(encoder, [d for d in everything if tuple(d.p2_facts) in held], bar.update)}
        if episodes:
            train = train + TurnEmbeddings.from_episodes(encoder, episodes[:cut], bar.update)
        if episodes[cut:]:
            valid["self-play"] = TurnEmbeddings.from_episodes(encoder, episodes[cut:], bar.update)
        bar.close()
        bar = tqdm(total=steps, desc="training head", unit="step")
        head = train_identifier_head(train, steps, seed=seed,
                                     progress=lambda step, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")))
        bar.close()
        head.save(out)
        report = {name: {f"hits1_at_{t}": identification_hits(head, v, k=20, turns=t) for t in (1, 4, 7)}
                  for name, v in valid.items() if len(v.personas) >= 20}
        out.with_suffix(".json").write_text(json.dumps({
            "data": str(split), "selfplay_interviews": len(episodes), "train_personas": len(train.personas),
            "steps": steps, "held_out": report}, indent=1))
        for name, hits in report.items():
            typer.echo(f"held-out {name} conversations, Hits@1 of 20: " + ", ".join(
                f"after {k.rsplit('_', 1)[1]} turns {100 * v:.1f}%" for k, v in hits.items()))
        typer.echo(f"Wrote {out}", err=True)


def _guide(name: str) -> str:
    if name not in IDENTIFIERS[:2]:
        raise UserError(f"--guide must be one of {', '.join(IDENTIFIERS[:2])}")
    return name


def _self_play(model_name, device, head_path, turns, max_new_tokens, workers, need_head: bool = False):
    """:class:`~personagpt.auth.env.SelfPlay` over the loaded model, with the sentence identifier and, where a
    head fits the model, the embedding identifier."""
    from personagpt.auth.env import SelfPlay
    from personagpt.sampling import SamplingConfig

    head = _head(head_path, model_name, required=need_head)
    loaded, fmt = load(model_name, device)
    loaded.eval()
    return SelfPlay(loaded, fmt, head, turns, SamplingConfig(max_new_tokens=max_new_tokens), workers)


@app.command("train")
def train(
    model: ModelOpt = None,
    guide: GuideOpt = "sentence",
    identifier: IdentifierOpt = None,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds of self-play + DQN updates.")] = 30,
    episodes: Annotated[int, typer.Option("--episodes-per-round", min=1, help="Interviews per round.")] = 16,
    updates: Annotated[int, typer.Option("--updates-per-round", min=1, help="Gradient steps per round.")] = 200,
    turns: TurnsOpt = 8,
    candidates: KOpt = 20,
    max_new_tokens: MaxNewOpt = 32,
    calibration: Annotated[int, typer.Option(min=0, help="Interviews (held-out training personas) to calibrate the "
                                                         "accept threshold on, after training.")] = 200,
    false_accept: Annotated[float, typer.Option(min=0.0, max=1.0, help="False-accept rate the threshold is "
                                                                       "calibrated for.")] = 0.05,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt when it exists.")] = True,
    warm_start: Annotated[Optional[Path], typer.Option(help="Self-play interviews (the selfplay.json of "
                                                            "`auth train-identifier --selfplay`) to fill the replay "
                                                            "buffer with before the first round.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Interviews run side by side.")] = 32,
    out: Annotated[Path, typer.Option(help="Run directory: checkpoint, log, curves, policy.pt, thresholds.json.")] = Path("runs/auth/policy"),
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
) -> None:
    """Learn which goals to pursue to find out who the partner is: DQN over the 11 goals in self-play on
    training personas (state: the --guide identifier's view and the turn; reward: each turn's gain in the true
    persona's log-probability among K candidates). Checkpointed every round; rerun to resume. Then calibrates the
    accept threshold of every identifier for `auth interact --claim` on held-out training personas."""
    with friendly_errors():
        import random

        from tqdm.auto import tqdm

        from personagpt.auth.env import candidate_sets
        from personagpt.auth.learn import DQNConfig, plot_training, train_policy

        guide = _guide(guide)
        held, pool = _training_personas(seed, 200)
        if len(pool) < candidates:
            raise UserError(f"only {len(pool)} training personas; -k must be at most that")
        env = _self_play(model, device, identifier, turns, max_new_tokens, workers, need_head=guide == "embedding")
        try:
            def collect(policy, count, round_index):
                truths = random.Random(seed + round_index).sample(pool, count)
                sets = candidate_sets(truths, pool, candidates, seed + round_index)
                bar = tqdm(total=count, desc=f"round {round_index + 1}/{rounds}", unit="interview", leave=False)
                episodes_ = env.play(sets, policy, seed + 1000 * round_index, lambda _: bar.update(1), guide)
                bar.close()
                return episodes_

            warm = []
            if warm_start is not None:
                from personagpt.auth.env import Episode, rescore

                if not warm_start.is_file():
                    raise UserError(f"{warm_start}: no such file")
                try:
                    warm = [Episode.from_json(e) for e in json.loads(warm_start.read_text())]
                except (ValueError, KeyError, TypeError):
                    raise UserError(f"{warm_start}: not a self-play file from `auth train-identifier`") from None
                warm = [e for e in warm if len(e.candidates) >= 2]
                warm_sets = candidate_sets([e.candidates[e.truth] for e in warm], pool, candidates, seed + 3)
                for e, (c, t) in zip(warm, warm_sets):  # the answers do not depend on the candidates: draw K of them
                    e.candidates, e.truth = c, t
                bar = tqdm(total=len(warm), desc="scoring warm-start interviews", unit="interview")
                rescore(warm, guide, env.identifiers[guide], bar.update)
                bar.close()
            config = DQNConfig(rounds=rounds, episodes_per_round=episodes, updates_per_round=updates, seed=seed)
            network = train_policy(collect, out, guide, config, resume=resume, warm_start=warm,
                                   progress=lambda e: typer.echo(
                f"round {e['round']}: epsilon {e['epsilon']:.2f}, mean return {e['mean_return']:+.3f}, "
                f"final Hits@1 {100 * e['final_hits1']:.0f}%, TD loss {e['td_loss']:.4f}", err=True))
            network.save(out / "policy.pt")
            log = json.loads((out / "log.json").read_text())
            plot_training(log, out / "training.png")
            if calibration:
                _calibrate(env, network, held[:calibration], held + pool, candidates, turns, false_accept, seed,
                           out / "thresholds.json")
        finally:
            env.close()
        typer.echo(f"Wrote {out / 'policy.pt'}, {out / 'training.png'}"
                   + (f", {out / 'thresholds.json'}" if calibration else ""), err=True)


def _calibrate(env, network, truths, pool, candidates: int, turns: int, false_accept: float, seed: int,
               path: Path) -> None:
    """Accept thresholds per turn for every identifier, from interviews of ``truths`` (held out from training)
    run by the learned policy: for each turn, the lowest claim probability that keeps false accepts at most
    ``false_accept``."""
    from tqdm.auto import tqdm

    from personagpt.auth.env import candidate_sets
    from personagpt.auth.measure import claims, threshold_for
    from personagpt.auth.policies import LearnedPolicy

    sets = candidate_sets(truths, pool, candidates, seed + 7)
    bar = tqdm(total=len(sets), desc="calibrating", unit="interview")
    episodes = env.play(sets, LearnedPolicy(network), seed + 7, lambda _: bar.update(1), network.guide)
    bar.close()
    thresholds = {name: {str(t): threshold_for(*claims(episodes, name, t, seed), false_accept)
                         for t in range(1, turns + 1)} for name in env.identifiers}
    path.write_text(json.dumps({"identifier": network.guide, "k": candidates, "false_accept": false_accept,
                                "interviews": len(episodes), "by_turn": thresholds[network.guide],
                                "by_identifier": thresholds}, indent=1))


@app.command("refit")
def refit(
    run: Annotated[Path, typer.Option(help="An `auth train` run directory (its checkpoint.pt holds the replay "
                                           "buffer).")] = Path("runs/auth/policy"),
    gamma: Annotated[float, typer.Option(min=0.0, max=1.0, help="Discount: 0 learns each goal's expected gain at "
                                                                "the next answer only (no bootstrapping).")] = 0.0,
    updates: Annotated[int, typer.Option(min=1, help="Gradient steps (minibatches of 64 transitions).")] = 4000,
    model: ModelOpt = None,
    identifier: IdentifierOpt = None,
    turns: TurnsOpt = 8,
    candidates: KOpt = 20,
    max_new_tokens: MaxNewOpt = 32,
    calibration: Annotated[int, typer.Option(min=0, help="Interviews (held-out training personas) to calibrate "
                                                         "the accept threshold on, with the refitted policy.")] = 200,
    false_accept: Annotated[float, typer.Option(min=0.0, max=1.0, help="False-accept rate to calibrate for.")] = 0.05,
    workers: Annotated[int, typer.Option(min=1, help="Interviews run side by side (calibration).")] = 32,
    out: Annotated[Path, typer.Option(help="Where policy.pt (and thresholds.json) go.")] = Path("runs/auth/refit"),
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
) -> None:
    """Fit a new policy on the self-play an `auth train` run already played (its replay buffer), without playing
    more: a different discount (e.g. --gamma 0, each goal judged by the next answer's gain alone) or more updates.
    Then calibrates the accept thresholds with it, as `auth train` does."""
    with friendly_errors():
        from tqdm.auto import tqdm

        from personagpt.auth.learn import DQNConfig, refit_policy

        checkpoint = run / "checkpoint.pt"
        if not checkpoint.is_file():
            raise UserError(f"{checkpoint}: no such file (run `personagpt auth train --out {run}` first)")
        recorded = _policy_network(run / "policy.pt") if (run / "policy.pt").is_file() else None
        bar = tqdm(total=updates, desc="fitting", unit="update")
        try:
            network, losses = refit_policy(checkpoint, DQNConfig(gamma=gamma, seed=seed), updates,
                                           recorded.guide if recorded is not None else None,
                                           lambda done, loss: (bar.update(done - bar.n), bar.set_postfix(loss=f"{loss:.4f}")))
        except (ValueError, KeyError, RuntimeError) as e:
            raise UserError(f"{checkpoint}: cannot refit from it ({e})") from None
        finally:
            bar.close()
        out.mkdir(parents=True, exist_ok=True)
        network.save(out / "policy.pt")
        (out / "refit.json").write_text(json.dumps({"run": str(run), "gamma": gamma, "updates": updates,
                                                    "final_loss": sum(losses[-100:]) / max(1, len(losses[-100:]))}))
        typer.echo(f"Wrote {out / 'policy.pt'} (guide: {network.guide}, gamma {gamma}, {updates} updates)", err=True)
        if calibration:
            held, pool = _training_personas(seed, 200)
            env = _self_play(model, device, identifier, turns, max_new_tokens, workers,
                             need_head=network.guide == "embedding")
            try:
                _calibrate(env, network, held[:calibration], held + pool, candidates, turns, false_accept, seed,
                           out / "thresholds.json")
            finally:
                env.close()
            typer.echo(f"Wrote {out / 'thresholds.json'}", err=True)


POLICIES = ("random", "round-robin", "no-goal", "learned", "lookahead")


@app.command("eval")
def evaluate(
    model: ModelOpt = None,
    policy: Annotated[Optional[list[str]], typer.Option("--policy", help=f"{', '.join(POLICIES)} (repeatable; "
                      "default: all but lookahead, learned only when a policy is shipped or given). lookahead tries "
                      "all 11 goals every turn and keeps the best for the truth: an 11x dearer oracle.")] = None,
    conversations: Annotated[int, typer.Option(min=1, help="Interviews per policy (300 or more for figures worth comparing).")] = 300,
    likelihood: Annotated[int, typer.Option(min=0, help="Also rank with the likelihood identifier (the dialogue "
                                                        "model; K rows per turn: about a minute per interview on a "
                                                        "2-core CPU) on the first N interviews of each policy.")] = 0,
    turns: TurnsOpt = 8,
    candidates: KOpt = 20,
    data: Annotated[Optional[Path], typer.Option(help="Held-out dialogues whose personas are interviewed "
                                                      "(default: the Persona-Chat validation split).")] = None,
    identifier: IdentifierOpt = None,
    policy_path: PolicyPathOpt = None,
    thresholds: ThresholdsOpt = None,
    max_new_tokens: MaxNewOpt = 32,
    seed: SeedOpt = 0,
    out: Annotated[Path, typer.Option(help="Directory for results.json and the plots.")] = Path("runs/auth"),
    workers: Annotated[int, typer.Option(min=1, help="Interviews run side by side.")] = 32,
    device: DeviceOpt = None,
) -> None:
    """Interview held-out personas with each policy; print Hits@1 of K after every turn (95% intervals) per
    identifier, plot it, and measure verification (half the interviews claim the true persona, half a wrong
    one): ROC AUC and false-accept / false-reject rates at the calibrated threshold after 4 and 8 turns."""
    with friendly_errors():
        import random

        from tqdm.auto import tqdm

        from personagpt.auth.env import candidate_sets, likelihood_identifiers, rescore
        from personagpt.auth.measure import (claims, error_rates, hits_by_turn, markdown_table, paired_with, plot,
                                             roc_auc)
        from personagpt.auth.policies import LearnedPolicy, LookaheadPolicy, baseline_policies

        network = _policy_network(policy_path)
        available = dict(baseline_policies(seed))
        if network is not None:
            available["learned"] = LearnedPolicy(network)
        available["lookahead"] = LookaheadPolicy()
        names = policy or [n for n in POLICIES if n in available and n != "lookahead"]
        unknown = [n for n in names if n not in POLICIES]
        if unknown:
            raise UserError(f"unknown policy {', '.join(unknown)}; use {', '.join(POLICIES)}")
        if "learned" in names and network is None:
            raise UserError("no learned policy is shipped; train one with `personagpt auth train` and pass "
                            "--policy-path")
        split, pool = _pool(data)
        if conversations > len(pool):
            raise UserError(f"{split} has {len(pool)} personas; ask for at most that many --conversations")
        if candidates > len(pool):
            raise UserError(f"{split} has {len(pool)} personas; -k must be at most that")
        calibrated = _thresholds(thresholds, candidates)
        truths = random.Random(seed).sample(pool, conversations)
        sets = candidate_sets(truths, pool, candidates, seed)
        guides = {"learned": network.guide} if network is not None else {}
        env = _self_play(model, device, identifier, turns, max_new_tokens, workers,
                         need_head="embedding" in guides.values() and "learned" in names)
        results, played, paired = {}, {}, {}
        try:
            for name in names:
                bar = tqdm(total=conversations, desc=name, unit="interview")
                episodes = env.play(sets, available[name], seed, lambda _: bar.update(1), guides.get(name))
                bar.close()
                if likelihood:
                    bar = tqdm(total=min(likelihood, conversations), desc=f"{name}: likelihood ranking",
                               unit="interview")
                    rescore(episodes[:likelihood], "likelihood", likelihood_identifiers(env.model, env.fmt)["likelihood"],
                            bar.update)
                    bar.close()
                played[name] = episodes
                results[name] = {"episodes": [e.to_json() for e in episodes], "by_turn": {}, "verification": {}}
                for ident in IDENTIFIERS:
                    scored = [e for e in episodes if ident in e.scores and e.scores[ident]]
                    if not scored:
                        continue
                    results[name]["by_turn"][ident] = hits_by_turn(scored, ident)
                    for t in sorted({min(4, turns), turns}):
                        scores, genuine = claims(scored, ident, t, seed)
                        row = {"interviews": len(scored), "auc": roc_auc(scores, genuine)}
                        if ident in calibrated and str(t) in calibrated[ident]:
                            row |= {"threshold": calibrated[ident][str(t)],
                                    **error_rates(scores, genuine, calibrated[ident][str(t)])}
                        results[name]["verification"][f"{ident}@{t}"] = row
                paired = paired_with(played, "random")
                out.mkdir(parents=True, exist_ok=True)  # after every policy: a stopped run keeps the finished ones
                (out / "results.json").write_text(json.dumps({
                    "conversations": conversations, "k": candidates, "turns": turns, "data": str(split),
                    "results": results, "paired_vs_random": paired}, indent=1))
        finally:
            env.close()
        for ident in IDENTIFIERS:
            table = {name: r["by_turn"][ident] for name, r in results.items() if ident in r["by_turn"]}
            if not table:
                continue
            png = plot(table, out / f"hits_by_turn_{ident}.png", 1 / candidates)
            shown = min(likelihood, conversations) if ident == "likelihood" else conversations
            typer.echo(f"\n{ident} identifier: Hits@1 of {candidates} (%) after each turn, {shown} interviews per "
                       "policy, 95% intervals:")
            typer.echo(markdown_table(table))
            typer.echo(f"(plot: {png})", err=True)
        if paired:
            typer.echo("\npaired with random (the same personas and distractors): Hits@1 difference in points "
                       "[95% paired bootstrap]")
            for key, rows in paired.items():
                typer.echo(f"| {key} | " + " | ".join(f"turn {r['turn']}: {r['points']:+.1f} [{r['low']:+.1f}, "
                                                      f"{r['high']:+.1f}]" for r in rows) + " |")
        typer.echo("\nverification (half true claims, half false): ROC AUC; FAR / FRR at the calibrated threshold")
        typer.echo("| policy | identifier@turn | AUC | FAR | FRR |\n|---|---|---:|---:|---:|")
        for name, r in results.items():
            for key, v in r["verification"].items():
                rates = (f"{100 * v['false_accept']:.1f}% | {100 * v['false_reject']:.1f}%" if "false_accept" in v
                         else "- | -")
                typer.echo(f"| {name} | {key} | {v['auc']:.3f} | {rates} |")
        typer.echo(f"Wrote {out / 'results.json'}", err=True)


def _thresholds(path: Path | None, k: int) -> dict:
    """{identifier: {turn: threshold}} calibrated for this K, or {} (with a note) when there is none."""
    from personagpt.auth.identify import packaged_head_path

    chosen = path or packaged_head_path().with_name("thresholds.json")
    if not chosen.is_file():
        if path is not None:
            raise UserError(f"{path}: no such thresholds file")
        return {}
    try:
        saved = json.loads(chosen.read_text())
        if saved["k"] != k:
            typer.echo(f"Note: {chosen} was calibrated for K = {saved['k']}, not {k}; no error rates.", err=True)
            return {}
        return saved.get("by_identifier") or {saved["identifier"]: saved["by_turn"]}
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{chosen}: not a thresholds file from `personagpt auth train`") from None


def _read_claim(path: Path) -> list[str]:
    """A persona as JSON: a list of fact strings, or an object with such a list under "persona"."""
    if not path.is_file():
        raise UserError(f"{path}: no such claim file")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    facts = value.get("persona") if isinstance(value, dict) else value
    if not isinstance(facts, list) or not facts or not all(isinstance(f, str) and f.strip() for f in facts):
        raise UserError(f'{path}: a claim is a JSON list of persona facts (strings), or {{"persona": [...]}}')
    from personagpt.data import persona_fact

    return [persona_fact(f) for f in facts]


@app.command("interact")
def interact(
    model: ModelOpt = None,
    claim: Annotated[Optional[Path], typer.Option(help="JSON persona the person claims to have; the interview ends "
                                                       "with accept or reject.")] = None,
    turns: TurnsOpt = 8,
    candidates: KOpt = 20,
    identifier: IdentifierOpt = None,
    policy_path: PolicyPathOpt = None,
    thresholds: ThresholdsOpt = None,
    max_new_tokens: MaxNewOpt = 32,
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
) -> None:
    """Be interviewed: the interviewer asks (its goal from the learned policy, else a random goal), you answer, and
    after every answer the three likeliest of K candidate personas are shown (judged by the policy's identifier,
    else the sentence identifier). Without --claim you are given a persona to play; with
    --claim the last answer ends in accept or reject. An empty line or end of input stops early."""
    with friendly_errors():
        import random

        import torch

        from personagpt.auth.env import View
        from personagpt.auth.identify import EmbeddingIdentifier, FactEmbeddings, PooledEncoder, SentenceIdentifier
        from personagpt.auth.policies import LearnedPolicy
        from personagpt.cli.common import Prompter
        from personagpt.data import load_personas, resolve_personas_path
        from personagpt.generation import Conversation
        from personagpt.sampling import SamplingConfig
        from personagpt.format import DEFAULT_ACTIONS
        from personagpt.text import for_people, to_model

        claimed = _read_claim(claim) if claim is not None else None
        with _loading("the persona list"):
            pool = [p for p in load_personas(resolve_personas_path()) if p != claimed]
        if candidates - 1 > len(pool):
            raise UserError(f"-k {candidates} needs {candidates - 1} distractors; the persona list has {len(pool)}")
        rng = random.Random(seed)
        network = _policy_network(policy_path)
        judge_name = network.guide if network is not None else "sentence"
        head = _head(identifier, model) if judge_name == "embedding" else None
        calibrated = _thresholds(thresholds, candidates).get(judge_name, {})
        chosen = rng.sample(pool, candidates if claimed is None else candidates - 1)
        truth = claimed or chosen[0]
        people = [truth] + [p for p in chosen if p is not truth]
        rng.shuffle(people)
        if claimed is None:
            typer.echo("You play this persona (answer as this person would):\n  " + "\n  ".join(truth))
        elif not calibrated:
            typer.echo("Note: no calibrated threshold for this K; the interview will not accept or reject.", err=True)
        policy = LearnedPolicy(network) if network is not None else None
        if network is None:
            typer.echo("Note: no learned policy; the interviewer picks goals at random.", err=True)
        with _loading(None):  # load() names the model
            loaded, fmt = load(model, device)
            loaded.eval()
        with _loading(f"the {judge_name} identifier and the {len(people)} candidates' facts"):
            if head is not None:
                judge = EmbeddingIdentifier(PooledEncoder(loaded, fmt), head, people)
            else:
                judge = SentenceIdentifier(FactEmbeddings(), people)
        interviewer = Conversation.with_persona(loaded, fmt, [], speaker=1, seed=seed,
                                                sampling=SamplingConfig(max_new_tokens=max_new_tokens))
        typer.echo("Ready. The interviewer's first question follows; an empty line ends the interview.", err=True)
        prompter, scores, used, answered = Prompter(), torch.zeros(len(people)), [], 0
        for turn in range(turns):
            goal = policy.choose(View(turn, scores, used, candidates=people)) if policy is not None else rng.choice(DEFAULT_ACTIONS)
            used.append(goal)
            interviewer.set_action(goal)
            question = interviewer.respond()
            typer.echo(f"\ninterviewer ({goal}) > {for_people(question)}")
            answer = prompter.ask("you > ")
            if not answer:
                break
            interviewer.add_turn(to_model(answer))
            scores = judge.add_exchange(question, to_model(answer))
            answered += 1
            _show_ranking(scores, people, truth, "claimed" if claimed else "you")
        typer.echo(_verdict(scores, people, truth, claimed is not None, answered, calibrated, candidates))


@contextmanager
def _loading(what: str | None):
    """Say what is loading (on stderr) and how long it took: the interview's set-up takes tens of seconds."""
    if what:
        typer.echo(f"Loading {what} ...", err=True)
    started = time.perf_counter()
    yield
    typer.echo(f"  done in {time.perf_counter() - started:.1f} s", err=True)


def _show_ranking(scores, people: list[list[str]], truth: list[str], mark: str, top: int = 3) -> None:
    import torch

    probabilities = torch.softmax(scores, 0)
    for rank, index in enumerate(probabilities.argsort(descending=True)[:top].tolist(), 1):
        marked = f" ({mark})" if people[index] is truth else ""
        typer.echo(f"  {rank}. {100 * float(probabilities[index]):5.1f}%  {' '.join(people[index])}{marked}")


def _verdict(scores, people: list[list[str]], truth: list[str], claimed: bool, answered: int,
             calibrated: dict, candidates: int) -> str:
    """The interview's last words: where the true (or claimed) persona ranks and, for a claim, ACCEPT or REJECT
    with the probability against the calibrated threshold."""
    import torch

    if not answered:
        return "\nNo answers, so no ranking and no verdict."
    probabilities = torch.softmax(scores, 0)
    p = float(probabilities[people.index(truth)])
    rank = 1 + int((probabilities > probabilities[people.index(truth)]).sum())
    who = "the claimed persona" if claimed else "your persona"
    lines = [f"\nFinal ranking after {answered} answer{'s' * (answered != 1)}: {who} is {rank} of {len(people)} "
             f"with probability {100 * p:.1f}%."]
    if claimed:
        threshold = calibrated.get(str(answered))
        if threshold is None:
            lines.append(f"No verdict: no accept threshold is calibrated for K = {candidates} after {answered} "
                         "answers (auth train calibrates them).")
        else:
            accept = p >= threshold
            margin = p / threshold if accept else threshold / max(p, 1e-9)
            lines.append(f"{'ACCEPT' if accept else 'REJECT'}: {100 * p:.1f}% against an accept threshold of "
                         f"{100 * threshold:.1f}% (calibrated on held-out self-play), {margin:.1f}x "
                         f"{'above' if accept else 'below'} it.")
    return "\n".join(lines)
