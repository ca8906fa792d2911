"""Every command's --help reads well at 80 columns: whole option names, whole words, no <bool> on flags."""

import re

import click
import pytest
from click.testing import CliRunner

from personagpt.cli import command


def _commands(group: click.Command, path=()):
    yield path, group
    for name, sub in getattr(group, "commands", {}).items():
        yield from _commands(sub, path + (name,))


COMMANDS = list(_commands(command()))


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[" ".join(p) or "personagpt" for p, _ in COMMANDS])
def test_help_at_80_columns(path, cmd):
    result = CliRunner().invoke(command(), [*path, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    text = result.output
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert "<bool>" not in text and "…" not in text and "issue" not in text.lower()
    flat = " ".join(re.sub(r"-\n\s+", "-", text).split())  # a line may break after a hyphen
    for param in cmd.params:
        if isinstance(param, click.Option):
            for name in param.opts + param.secondary_opts:
                assert re.search(rf"(^|[\s,]){re.escape(name)}([\s,]|$)", text), f"{name} cut in:\n{text}"
            for word in (param.help or "").split():  # no word broken across lines (or cut)
                assert word in flat, f"{word!r} broken in:\n{text}"
    if cmd.help:  # the docstring's sentences are rewrapped, not broken where the source broke them
        first = " ".join(cmd.help.split("\n\n")[0].split())
        assert first in flat
