"""The ``personagpt`` command line: thin typer commands over the library, one module per command family.

Commands import the library inside their bodies, not at the top: `personagpt --help` and option errors must not
wait for torch and transformers to load.
"""

from __future__ import annotations

from typing import Annotated

import click
import typer

from personagpt.cli import auth, chat, eval as eval_cmd, export, selfplay, serve, teach, train
from personagpt.cli.common import DEBUG

app = typer.Typer(
    help="PersonaGPT: persona-conditioned, controllable open-domain dialogue.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: rewraps sentences to the terminal, never cuts option names
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _global_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an internal error.")] = False,
) -> None:
    DEBUG["on"] = debug


app.command()(chat.interact)
app.command()(selfplay.selfplay)
app.command()(train.prepare)
app.command()(train.train)
app.command("build-control-data")(train.build_control_data)
app.command("build-selftrain-data")(train.build_selftrain_data)
app.command()(teach.teach)
app.command("eval")(eval_cmd.evaluate_models)
app.command()(serve.serve)
app.command()(export.export)
app.add_typer(auth.app, name="auth")


def command() -> click.Command:
    """The click command behind ``app``, with plain metavars (``INT``, ``TEXT``) instead of typer's ``<int range>``."""
    built = typer.main.get_command(app)
    _plain_metavars(built)
    return built


def _plain_metavars(command: click.Command) -> None:
    names = {"str": "TEXT", "int": "INT", "float": "FLOAT", "Path": "PATH"}
    for param in command.params:
        if getattr(param, "is_flag", False) or param.metavar is not None or not hasattr(param, "type_descriptor"):
            continue
        desc = param.type_descriptor
        if desc.is_choice:
            param.metavar = "[" + "|".join(str(c) for c in desc.choices or ()) + "]"
        else:
            bare = "Path" if desc.is_path else param.bare_type().removeprefix("list[").removesuffix("]")
            param.metavar = names.get(bare, bare.upper())
    for sub in getattr(command, "commands", {}).values():
        _plain_metavars(sub)


def main() -> None:
    command()(prog_name="personagpt")
