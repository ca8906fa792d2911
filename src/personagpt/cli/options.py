"""Command-line options declared once: shared option types, and flags derived from configuration dataclasses.

:func:`adds_options` grafts extra keyword parameters onto a typer command and hands the command one built
object instead (a ``SamplingConfig``, a settings dict), so flags are declared in one place, not per command.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from personagpt.cli.common import friendly_errors
from personagpt.generate.sampling import FRONT_END_DEFAULTS, MAX_GUIDANCE, SamplingConfig


ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", help="Local checkpoint directory, LoRA adapter directory, smollm2-135m (the packaged base), or a "
                    "Hugging Face hub id (needs a network). Default: the bundled model.")]
DeviceOpt = Annotated[Optional[str], typer.Option(help=(
    "cpu, cuda (or gpu) or cuda:N (default: cuda when this torch build has CUDA and a GPU is visible, else cpu)."))]
MaxLenOpt = Annotated[Optional[int], typer.Option(
    "--max-length", "--max_length", "-maxlen",
    help="Context window in tokens (default 1024, as the server's --max-context, or the model's if smaller). Oldest "
         "turns are dropped to fit; the persona never is.")]
SeedOpt = Annotated[Optional[int], typer.Option(help="Random seed for reproducible sampling.")]
TurnsOpt = Annotated[int, typer.Option("--num-turns", "--num_turns", "-turns", min=1, help="Number of turns.")]
PersonaOpt = Annotated[Optional[list[str]], typer.Option(
    "--persona", help="A persona fact (repeat for several, up to 5).")]
PersonaFileOpt = Annotated[Optional[Path], typer.Option(
    "--persona-file", help="Text file with one persona fact per line (blank lines and # comments skipped).")]
RandomPersonaOpt = Annotated[bool, typer.Option(
    "--random-persona", help="Draw a random persona (from --personas-path, else the list shipped with the package).")]
PersonasPathOpt = Annotated[Optional[Path], typer.Option(
    "--personas-path", help="JSONL of persona profiles, one JSON list of facts per line (default: "
                            "personachat/personas_train.jsonl in $PERSONAGPT_DATA if present, else the packaged "
                            "list).")]


def _option(name: str, annotation, default) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


SAMPLING_OPTIONS = [
    _option("top_k", Annotated[int, typer.Option("--top-k", "--top_k", "-k", help=(
        "Top-k sampling: keep the k likeliest tokens."))], FRONT_END_DEFAULTS.top_k),
    _option("top_p", Annotated[float, typer.Option("--top-p", "--top_p", "-p", help=(
        "Nucleus sampling probability mass."))], FRONT_END_DEFAULTS.top_p),
    _option("temperature", Annotated[float, typer.Option(help=(
        "Sampling temperature, > 0 (lower is more conservative; for deterministic replies use --greedy)."))],
        FRONT_END_DEFAULTS.temperature),
    _option("repetition_penalty", Annotated[float, typer.Option("--repetition-penalty", help=(
        "Penalty > 1 discourages repeated tokens."))], FRONT_END_DEFAULTS.repetition_penalty),
    _option("max_new_tokens", Annotated[int, typer.Option("--max-new-tokens", help="Longest reply, in tokens.")],
            FRONT_END_DEFAULTS.max_new_tokens),
    _option("greedy", Annotated[bool, typer.Option("--greedy", help="Greedy decoding instead of sampling.")], False),
    _option("num_candidates", Annotated[int, typer.Option("--candidates", min=1, max=8, help=(
        "Sample this many replies side by side and keep the best by persona consistency, goal, repetition and "
        "fluency (best-of-N; 1: plain sampling, one reply). Ignored with --greedy."))],
        FRONT_END_DEFAULTS.num_candidates),
    _option("goal_candidates", Annotated[int, typer.Option("--goal-candidates", min=1, max=8, help=(
        "--candidates for a turn that pursues a goal (goal mode, the interviewer of selfplay); the bundled model "
        "follows its goal as often with one guided sample (docs/character.md)."))], FRONT_END_DEFAULTS.goal_candidates),
    _option("goal_guidance", Annotated[float, typer.Option("--goal-guidance", min=0, max=MAX_GUIDANCE, help=(
        "Classifier-free guidance toward the goal (goal mode): each token is sampled from "
        "guide + g * (prompt - guide), the guide being the prompt without the goal; 1: off."))],
        FRONT_END_DEFAULTS.goal_guidance),
    _option("persona_guidance", Annotated[float, typer.Option("--persona-guidance", min=0, max=MAX_GUIDANCE, help=(
        "Classifier-free guidance toward the persona (persona mode), the guide being the prompt without the "
        "persona facts; 1: off."))], FRONT_END_DEFAULTS.persona_guidance),
    _option("consistent_answers", Annotated[bool, typer.Option("--consistent-answers/--free-answers", help=(
        "A yes/no question about the persona (one of its facts, or a thing of the same kind it does not have: "
        "another pet, job, place ...) is never answered against it: the openings that would (\"yes\" to "
        "\"do you have cats ?\" from a dog owner) are not sampled."))], FRONT_END_DEFAULTS.consistent_answers),
    _option("yes_no_first", Annotated[bool, typer.Option("--yes-no-first/--any-opening", help=(
        "With --consistent-answers, such a question is answered with the yes or no the persona implies first "
        "(\"no , i have two dogs .\")."))], FRONT_END_DEFAULTS.yes_no_first),
    _option("commit_tokens", Annotated[int, typer.Option("--commit-tokens", min=0, help=(
        "Best-of-N: choose after this many tokens of each candidate, then stream the chosen one (0: choose "
        "among whole replies, shown only when all have ended)."))], FRONT_END_DEFAULTS.commit_tokens),
]


def sampling_from(values: dict) -> SamplingConfig:
    from personagpt.errors import SettingsError

    if values["temperature"] == 0 and not values["greedy"]:
        raise SettingsError("--temperature must be > 0; for deterministic (greedy) replies use --greedy")
    greedy = values.pop("greedy")
    if greedy:  # N greedy candidates would be N copies of one reply
        values["num_candidates"] = 1
    return SamplingConfig(do_sample=not greedy, **values)


def adds_options(params: list[inspect.Parameter], build: Callable[[dict], Any], into: str):
    """Decorator: the command gains ``params`` as flags; their values, passed through ``build``, arrive as the
    command's ``into`` argument."""

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        kept = [p for name, p in signature.parameters.items() if name != into]
        names = [p.name for p in params]

        @functools.wraps(command)
        def wrapper(**kwargs):
            values = {name: kwargs.pop(name) for name in names}
            with friendly_errors():  # a bad flag value is a user's mistake: one line, no traceback
                built = build(values)
            return command(**kwargs, **{into: built})

        wrapper.__signature__ = signature.replace(parameters=kept + params)
        wrapper.__annotations__ = {p.name: p.annotation for p in kept + params}
        del wrapper.__wrapped__  # typer must see the new signature, not the original's
        return wrapper

    return decorate


sampling_options = adds_options(SAMPLING_OPTIONS, sampling_from, "sampling")


def config_options(cls, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One optional flag per dataclass field (help from the field's metadata); unset flags are None."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        kind = hints[f.name]
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        flags = f.metadata.get("flags", ())
        # unset flags stay None (so a settings file is not overridden), so the default is said in the help
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)
        shown = f" [default: {default}]" if default not in (None, [], (), "") else ""
        out.append(_option(f.name, Annotated[Optional[kind], typer.Option(
            *flags, help=(f.metadata.get("help") or "") + shown)], None))
    return out
