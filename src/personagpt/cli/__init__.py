"""The ``personagpt`` command line: thin typer commands over the library, one module per command family."""

from __future__ import annotations

from typing import Annotated

import typer

from personagpt.cli import auth, chat, eval as eval_cmd, export, selfplay, serve, teach, train
from personagpt.cli.common import DEBUG

app = typer.Typer(
    help="PersonaGPT: persona-conditioned, controllable open-domain dialogue.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
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


def main() -> None:
    app()
