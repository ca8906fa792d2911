"""``personagpt auth ...``: persona authentication (an interviewer finds out who it is talking to)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from personagpt.cli.auth_options import (DecodingOpt, DistilledOpt, FalseAcceptOpt, GuideOpt, IdentifierOpt, KOpt,
                                         MaxNewOpt, PartnerOpt, PolicyPathOpt, SeedOpt, ThresholdsOpt, TurnsOpt,
                                         WorkersOpt, checked_decoding, checked_guide)
from personagpt.cli.common import UserError, friendly_errors, load, loading
from personagpt.cli.options import DeviceOpt, ModelOpt

app = typer.Typer(help="Persona authentication: interviews that identify who the partner is.", no_args_is_help=True,
                  rich_markup_mode=None)


def _bar(desc: str, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="interview", leave=False)


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
        from tqdm.auto import tqdm

        from personagpt.auth.commands import identifier_selfplay, train_identifier as train_head
        from personagpt.data.dialogues import default_data_dir, load_dialogues

        split = data or default_data_dir() / "personachat" / "train_self_partial_no_cands.txt"
        everything = load_dialogues(split)[:dialogues]
        loaded, fmt = load(model, device)
        loaded.eval()
        episodes = []
        if selfplay:
            bar = _bar("self-play", selfplay)
            try:
                episodes = identifier_selfplay(loaded, fmt, selfplay, turns, max_new_tokens, workers, seed,
                                               selfplay_file or out.with_name("selfplay.json"), bar.update)
            finally:
                bar.close()
        encoding = tqdm(total=len(everything) + len(episodes), desc="encoding turns", unit="dialogue")
        training = tqdm(total=steps, desc="training head", unit="step")
        try:
            head, report, trained_on = train_head(
                loaded, fmt, everything, episodes, steps, seed, encoding.update,
                lambda step, loss: (training.update(1), training.set_postfix(loss=f"{loss:.3f}")))
        finally:
            encoding.close()
            training.close()
        head.save(out)
        out.with_suffix(".json").write_text(json.dumps({
            "data": str(split), "selfplay_interviews": len(episodes), "train_personas": trained_on,
            "steps": steps, "held_out": report}, indent=1))
        for name, hits in report.items():
            typer.echo(f"held-out {name} conversations, Hits@1 of 20: " + ", ".join(
                f"after {k.rsplit('_', 1)[1]} turns {100 * v:.1f}%" for k, v in hits.items()))
        typer.echo(f"Wrote {out}", err=True)


def _self_play(model_name, device, head_path, turns, max_new_tokens, workers, need_head: bool = False,
               embedding: bool = True, partner_candidates: int = 1, decoding: str = "fast"):
    """:class:`~personagpt.auth.interview.SelfPlay` over the loaded model, with the sentence, exchange and calibrated
    identifiers and, where a head fits the model, the embedding identifier."""
    from personagpt.auth.interview import SelfPlay
    from personagpt.auth.commands import load_head
    from personagpt.generate.sampling import DEFAULT_GOAL_GUIDANCE, SamplingConfig

    head = load_head(head_path, model_name, required=need_head) if embedding or need_head else None
    loaded, fmt = load(model_name, device)
    loaded.eval()
    # the interviewer's questions follow their goals with the front ends' guidance (the partner answers unguided)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, goal_guidance=DEFAULT_GOAL_GUIDANCE)
    return SelfPlay(loaded, fmt, head, turns, sampling, workers,
                    partner_candidates=partner_candidates, decoding=decoding)


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
    false_accept: FalseAcceptOpt = 0.05,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt when it exists.")] = True,
    warm_start: Annotated[Optional[Path], typer.Option(help="Self-play interviews (the selfplay.json of "
                                                            "`auth train-identifier --selfplay`) to fill the replay "
                                                            "buffer with before the first round.")] = None,
    workers: WorkersOpt = 32,
    out: Annotated[Path, typer.Option(help="Run directory: checkpoint, log, curves, policy.pt, thresholds.json.")] = Path("runs/auth/policy"),
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
) -> None:
    """Learn which goals to pursue to find out who the partner is: DQN over the 11 goals in self-play on
    training personas (state: the --guide identifier's view and the turn; reward: each turn's gain in the true
    persona's log-probability among K candidates). Checkpointed every round; rerun to resume. Then calibrates the
    accept threshold of every identifier for `auth interact --claim` on held-out training personas."""
    with friendly_errors():
        from personagpt.auth.interview import sample_sets
        from personagpt.auth.learn import DQNConfig, plot_training, train_policy
        from personagpt.auth.policies import LearnedPolicy
        from personagpt.auth.commands import calibrate, training_personas, warm_start_episodes

        guide = checked_guide(guide)
        held, pool = training_personas(seed, 200)
        if len(pool) < candidates:
            raise UserError(f"only {len(pool)} training personas; --candidates (-K) must be at most that")
        env = _self_play(model, device, identifier, turns, max_new_tokens, workers, need_head=guide == "embedding")
        try:
            def collect(policy, count, round_index):
                sets = sample_sets(pool, count, candidates, seed + round_index)
                bar = _bar(f"round {round_index + 1}/{rounds}", count)
                try:
                    return env.play(sets, policy, seed + 1000 * round_index, lambda *_: bar.update(1), guide)
                finally:
                    bar.close()

            warm = []
            if warm_start is not None:
                bar = _bar("scoring warm-start interviews", 0)
                try:
                    warm = warm_start_episodes(warm_start, env, guide, pool, candidates, seed, bar.update)
                finally:
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
                bar = _bar("calibrating", calibration)
                try:
                    calibrate(env, LearnedPolicy(network), network.guide, held[:calibration], held + pool,
                              candidates, false_accept, seed, out / "thresholds.json", bar.update)
                finally:
                    bar.close()
        finally:
            env.close()
        typer.echo(f"Wrote {out / 'policy.pt'}, {out / 'training.png'}"
                   + (f", {out / 'thresholds.json'}" if calibration else ""), err=True)


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
    false_accept: FalseAcceptOpt = 0.05,
    workers: WorkersOpt = 32,
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
        from personagpt.auth.policies import LearnedPolicy
        from personagpt.auth.commands import calibrate, load_policy_network, training_personas

        checkpoint = run / "checkpoint.pt"
        if not checkpoint.is_file():
            raise UserError(f"{checkpoint}: no such file (run `personagpt auth train --out {run}` first)")
        recorded = load_policy_network(run / "policy.pt") if (run / "policy.pt").is_file() else None
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
            held, pool = training_personas(seed, 200)
            env = _self_play(model, device, identifier, turns, max_new_tokens, workers,
                             need_head=network.guide == "embedding")
            bar = _bar("calibrating", calibration)
            try:
                calibrate(env, LearnedPolicy(network), network.guide, held[:calibration], held + pool, candidates,
                          false_accept, seed, out / "thresholds.json", bar.update)
            finally:
                bar.close()
                env.close()
            typer.echo(f"Wrote {out / 'thresholds.json'}", err=True)


@app.command("eval")
def evaluate(
    model: ModelOpt = None,
    policy: Annotated[Optional[list[str]], typer.Option("--policy", help="random, round-robin, no-goal, learned, "
                      "random-question, planner, distilled, lookahead (repeatable; default: the cheap ones: random, "
                      "round-robin, no-goal, random-question, and learned / distilled when one is shipped or given). "
                      "planner simulates every candidate question's answers under the likeliest personas (about "
                      "1.6x random's play time); the question policies (random-question, planner, distilled) pursue "
                      "random goals until the 3 likeliest candidates hold half the probability; lookahead is an "
                      "oracle that knows the truth.")] = None,
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
    distilled: DistilledOpt = None,
    embedding: Annotated[bool, typer.Option(help="Also score with the embedding identifier (one forward pass of the "
                                                 "dialogue model per answer).")] = True,
    thresholds: ThresholdsOpt = None,
    max_new_tokens: MaxNewOpt = 32,
    seed: SeedOpt = 0,
    out: Annotated[Path, typer.Option(help="Directory for results.json, the interviews and the plots; a rerun with "
                                           "the same settings resumes the interviews already there.")] = Path("runs/auth"),
    workers: WorkersOpt = 32,
    partner_candidates: PartnerOpt = 1,
    decoding: DecodingOpt = "exact",
    device: DeviceOpt = None,
) -> None:
    """Interview held-out personas with each policy; print Hits@1 of K after every turn (95% intervals) per
    identifier, plot it, and measure verification (half the interviews claim the true persona, half a wrong
    one): ROC AUC and false-accept / false-reject rates at the calibrated threshold after 4 and 8 turns."""
    with friendly_errors():
        from personagpt.auth.interview import sample_sets
        from personagpt.auth.report import report
        from personagpt.auth.commands import (COSTLY, IDENTIFIERS, POLICIES, evaluate as run_evaluation,
                                          load_distilled, load_policy_network, load_thresholds, make_policy,
                                          validation_pool)

        network = load_policy_network(policy_path)
        scorer = load_distilled(distilled)
        shipped = {"learned": network, "distilled": scorer}
        names = policy or [n for n in POLICIES if n not in COSTLY and shipped.get(n, True) is not None]
        unknown = [n for n in names if n not in POLICIES]
        if unknown:
            raise UserError(f"unknown policy {', '.join(unknown)}; use {', '.join(POLICIES)}")
        split, pool = validation_pool(data)
        if conversations > len(pool):
            raise UserError(f"{split} has {len(pool)} personas; ask for at most that many --conversations")
        if candidates > len(pool):
            raise UserError(f"{split} has {len(pool)} personas; --candidates (-K) must be at most that")
        calibrated, note = load_thresholds(thresholds, candidates)
        if note:
            typer.echo(f"Note: {note}", err=True)
        sets = sample_sets(pool, conversations, candidates, seed)
        env = _self_play(model, device, identifier, turns, max_new_tokens, workers, embedding=embedding,
                         need_head="learned" in names and network is not None and network.guide == "embedding",
                         partner_candidates=partner_candidates, decoding=checked_decoding(decoding))
        bars = []

        def progress(name: str, total: int):
            bar = _bar(name, total)
            bars.append(bar)
            return lambda *_: bar.update(1)

        try:
            policies = {name: make_policy(name, env, seed, network, scorer) for name in names}
            saved = run_evaluation(env, sets, policies, out, seed, likelihood, calibrated, progress,
                                   {"conversations": conversations, "k": candidates, "turns": turns, "data": str(split)})
        finally:
            for bar in bars:
                bar.close()
            env.close()
        for png in saved["plots"]:
            typer.echo(f"(plot: {png})", err=True)
        counts = {ident: min(likelihood, conversations) if ident == "likelihood" else conversations
                  for ident in IDENTIFIERS}
        typer.echo("\n".join(report(saved["results"], saved["paired_vs_random"], candidates, counts)))
        if saved["carried"]:
            typer.echo(f"Kept as measured before (too few interviews stored): {', '.join(saved['carried'])}", err=True)
        typer.echo(f"Wrote {out / 'results.json'}", err=True)


@app.command("distill")
def distill(
    model: ModelOpt = None,
    interviews: Annotated[int, typer.Option(min=2, help="Planner interviews of training personas to learn from "
                                                        "(8 decisions each at 8 turns).")] = 150,
    steps: Annotated[int, typer.Option(min=1, help="Training steps (minibatches of 64 decisions).")] = 1500,
    turns: TurnsOpt = 8,
    candidates: KOpt = 20,
    max_new_tokens: MaxNewOpt = 32,
    workers: WorkersOpt = 32,
    partner_candidates: PartnerOpt = 1,
    decoding: DecodingOpt = "exact",
    calibration: Annotated[int, typer.Option(min=0, help="Interviews (held-out training personas) to calibrate the "
                                                         "accept thresholds on, with the distilled policy.")] = 200,
    false_accept: FalseAcceptOpt = 0.05,
    out: Annotated[Path, typer.Option(help="Run directory: the planner's decisions (decisions.jsonl; a rerun "
                                           "resumes them), distilled.pt, distill.json, thresholds.json.")] = Path("runs/auth/distill"),
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
) -> None:
    """Distil the planner into a policy that runs at random's cost: the planner (expected information gain by
    simulating answers under the likeliest candidates) interviews training personas, and a small network learns to
    pick the question it picked from cheap features of each option (how the candidates' probability splits on it).
    10% of the interviews are held out to report how often the two agree. Then calibrates the accept thresholds
    with the distilled policy, as `auth train` does with its own."""
    with friendly_errors():
        from tqdm.auto import tqdm

        from personagpt.auth.commands import calibrate_distilled, distill_policy, distillation_data, load_distilled

        env = _self_play(model, device, None, turns, max_new_tokens, workers, embedding=False,
                         partner_candidates=partner_candidates, decoding=checked_decoding(decoding))
        try:
            bar = _bar("planner interviews", interviews)
            try:
                decisions = distillation_data(env, interviews, candidates, seed, out / "decisions.jsonl",
                                              lambda: bar.update(1))
            finally:
                bar.close()
            fitting = tqdm(total=steps, desc="fitting", unit="step")
            try:
                report = distill_policy(decisions, steps, seed, out, lambda step, loss: (
                    fitting.update(1), fitting.set_postfix(loss=f"{loss:.3f}")))
            finally:
                fitting.close()
            typer.echo(f"agrees with the planner on {100 * report['held_out_agreement']:.1f}% of "
                       f"{report['held_out_decisions']} held-out decisions")
            typer.echo(f"Wrote {out / 'distilled.pt'}", err=True)
            if calibration:
                bar = _bar("calibrating", calibration)
                try:
                    calibrate_distilled(env, load_distilled(out / "distilled.pt"), calibration, candidates,
                                        false_accept, seed, out / "thresholds.json", bar.update)
                finally:
                    bar.close()
                typer.echo(f"Wrote {out / 'thresholds.json'}", err=True)
        finally:
            env.close()


@app.command("interact")
def interact(
    model: ModelOpt = None,
    claim: Annotated[Optional[Path], typer.Option(help=(
        'A JSON file with the persona the person claims to have: a list of facts, ["i have two dogs.", "i am a '
        'nurse."], or {"persona": [...]}; the interview ends with accept or reject.'))] = None,
    turns: TurnsOpt = 8,
    candidates: KOpt = 20,
    identifier: IdentifierOpt = None,
    policy_path: PolicyPathOpt = None,
    distilled: DistilledOpt = None,
    thresholds: ThresholdsOpt = None,
    max_new_tokens: MaxNewOpt = 32,
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
) -> None:
    """Be interviewed: the interviewer asks (the distilled question policy's choice when one is shipped or given,
    else the learned goal policy's, else a random goal), you answer, and after every answer the three likeliest of
    K candidate personas are shown (judged by the policy's identifier). Without --claim you are given a persona to
    play; with --claim the last answer ends in accept or reject. An empty line or end of input stops early."""
    with friendly_errors():
        from personagpt.auth.report import ranking_lines, read_claim, verdict
        from personagpt.auth.live import LiveInterview, interview_people, judge_for
        from personagpt.auth.commands import load_distilled, load_head, load_policy_network, load_thresholds
        from personagpt.cli.common import Prompter
        from personagpt.text import for_people, to_model

        claimed = read_claim(claim) if claim is not None else None
        with loading("the persona list"):
            people, truth = interview_people(candidates, claimed, seed)
        # a policy named on the command line comes first; else the shipped distilled one, else the shipped learned one
        scorer = load_distilled(distilled) if distilled is not None or policy_path is None else None
        network = load_policy_network(policy_path) if scorer is None else None
        guide = judge_for(scorer, network)
        head = load_head(identifier, model) if guide == "embedding" else None
        calibrated, _ = load_thresholds(thresholds, candidates)
        calibrated = calibrated.get(guide, {})
        if claimed is None:
            typer.echo("You play this persona (answer as this person would):\n  " + "\n  ".join(truth))
        elif not calibrated:
            typer.echo(f"Note: no threshold calibrated for the {guide} identifier at this K; the interview will not "
                       "accept or reject.", err=True)
        if scorer is None and network is None:
            typer.echo("Note: no learned policy; the interviewer picks goals at random.", err=True)
        with loading(None):  # load() names the model
            loaded, fmt = load(model, device)
            loaded.eval()
        with loading(f"the {guide} identifier and the {len(people)} candidates' facts"):
            live = LiveInterview(loaded, fmt, people, guide, scorer=scorer, network=network, head=head,
                                 max_new_tokens=max_new_tokens, seed=seed)
        typer.echo("Ready. The interviewer's first question follows; an empty line ends the interview.", err=True)
        prompter = Prompter()
        for _ in range(turns):
            action, question = live.ask()
            typer.echo(f"\ninterviewer ({action}) > {for_people(question)}")
            answer = prompter.ask("you > ")
            if not answer:
                break
            probabilities = live.answer(to_model(answer))
            typer.echo("\n".join(ranking_lines(probabilities, people, truth, "claimed" if claimed else "you")))
        typer.echo(verdict(live.probabilities(), people, truth, claimed is not None, live.answered, calibrated,
                           candidates))
