"""``personagpt teach``: teach the bot goals, old or new, by accepting or correcting its steered turns."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated, Optional

import typer

from personagpt.cli.common import Prompter, friendly_errors, load, persona_from_flags
from personagpt.cli.options import DeviceOpt, ModelOpt, PersonaOpt, SeedOpt, sampling_options
from personagpt.format import MAX_SEQUENCE_LENGTH
from personagpt.generate.sampling import SamplingConfig


@sampling_options
def teach(
    model: ModelOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Corrections are appended here as JSONL {goal, facts, history, response}.")] = Path("corrections.jsonl"),
    from_file: Annotated[Optional[Path], typer.Option("--from-file", help="Replay a saved corrections file instead of asking (non-interactive).")] = None,
    update: Annotated[bool, typer.Option("--update", help="Take gradient steps on each example as it comes; save the weights at exit.")] = False,
    save_to: Annotated[Path, typer.Option(help="Where --update writes the updated model (or LoRA adapter).")] = Path("taught-model"),
    replay_data: Annotated[Optional[list[Path]], typer.Option("--replay-data", help="Persona dialogues replayed during updates so the model does not forget (repeatable).")] = None,
    replay_ctrl: Annotated[Optional[list[Path]], typer.Option("--replay-ctrl", help="Action-code JSONL replayed during updates (repeatable).")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Gradient steps per new example.")] = 3,
    learning_rate: Annotated[float, typer.Option("--learning-rate", "--lr", help="Learning rate of the updates.")] = 1e-4,
    persona: PersonaOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    sampling: SamplingConfig = None,
) -> None:
    """Teach the bot turn-level goals, old or new (active learning).

    Each round you pick a goal from the list or type a new one, the bot generates a turn pursuing it, and you accept it (Enter) or type a better one; then you answer as its partner. Every accepted or corrected turn is appended to --out at once, so nothing is lost on Ctrl-C. With --update the model learns from each example on the spot (mixed with --replay-data / --replay-ctrl) and the weights are saved to --save-to at exit.
    """
    with friendly_errors():
        from personagpt.data.dialogues import load_control_records
        from personagpt.models.load import save_checkpoint
        from personagpt.scoring import record_loss
        from personagpt.control.teach import OnlineLearner, TeachSession

        records = load_control_records(from_file) if from_file is not None else None
        facts = persona_from_flags(persona, None, False, None, random.Random(seed))
        loaded, fmt = load(model, device, trainable=update)
        learner = None
        if update:
            from personagpt.data.examples import prepare as prepare_data
            from personagpt.models.load import context_limit

            length = min(MAX_SEQUENCE_LENGTH, context_limit(loaded))
            pools = {}
            if replay_data:
                pools["replay_persona"] = prepare_data(replay_data, fmt, length, "persona", progress=False)
            if replay_ctrl:
                pools["replay_control"] = prepare_data(replay_ctrl, fmt, length, "control", progress=False)
            if not pools:
                typer.echo("Note: no --replay-data/--replay-ctrl, so updates see only the new examples.", err=True)
            learner = OnlineLearner(loaded, fmt.tokenizer, learning_rate=learning_rate, steps=steps,
                                    max_length=length, seed=seed or 0, **pools)
        try:
            if records is not None:
                for n, record in enumerate(records, 1):
                    if learner is not None:
                        before = learner.learn(record)
                        after = record_loss(loaded, fmt, record)
                        typer.echo(f"{n}. [{record.goal}] loss {before:.3f} -> {after:.3f}")
                    else:
                        typer.echo(f"{n}. [{record.goal}] loss {record_loss(loaded, fmt, record):.3f}")
                return
            session = TeachSession(loaded, fmt, out, facts or [], learner, sampling, seed)
            teach_interactively(session)
        finally:
            if learner is not None and learner.updates:
                save_checkpoint(loaded, fmt.tokenizer, save_to)
                typer.echo(f"Saved the updated model to {save_to} ({learner.updates} update(s)).", err=True)


def teach_interactively(session) -> None:
    """Goal, proposed turn, verdict, the person's answer; the chat's commands (/help, /save, /quit) work too."""
    from personagpt.cli.chat import ChatSession, Quit
    from personagpt.text import for_people, to_model

    prompter = Prompter()
    chat = ChatSession(None, session.fmt, 1, session.facts, prompter, conversation=session.bot)
    try:
        while True:
            goal = chat.choose_goal()
            typer.echo(f"Bot [{goal}]: {for_people(session.propose(goal))}")
            chat.goals.append(goal)
            correction = prompter.ask(">> Enter to accept, or type a better turn: ")
            if correction is None:
                break
            _, before = session.verdict(to_model(correction) if correction else correction)
            if before is not None:
                typer.echo(f"(learned; loss on that turn was {before:.3f})")
            chat.user_turn()
    except Quit:
        pass
    typer.echo(f"{session.taught} example(s) saved to {session.out}.")
