"""The CLI driven for real: in-process with scripted stdin bytes, and as a subprocess for signals."""

import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from personagpt.cli import app

from conftest import PERSONACHAT

runner = CliRunner()


def run(args, stdin=b""):
    result = runner.invoke(app, [str(a) for a in args], input=stdin)
    assert "Traceback" not in result.output
    return result


def test_help_documents_flags():
    result = runner.invoke(app, ["interact", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    for flag in ("--mode", "--top_k", "--top_p", "--num_turns", "--persona-file", "--random-persona", "--seed"):
        assert flag in result.output


def test_mode0_asks_facts_then_chats(tiny_checkpoint):
    result = run(["interact", "--model", tiny_checkpoint, "--mode", "0", "-turns", "2", "--max-new-tokens", "5"],
                 b"i like dogs.\ni am a nurse.\n\nhello !\nwhat do you do ?\n")
    assert result.exit_code == 0, result.output
    assert "Persona: i like dogs. i am a nurse." in result.output
    assert result.output.count("Bot: ") == 2
    assert "Goodbye." in result.output


def test_original_flag_spellings(tiny_checkpoint):
    result = run(["interact", "--model", tiny_checkpoint, "-M", "0", "-turns", "1", "-k", "5", "-p", "0.8",
                  "-maxlen", "200", "--persona", "i like dogs.", "--max-new-tokens", "4"], b"hi\n")
    assert result.exit_code == 0, result.output
    assert result.output.count("Bot: ") == 1


def test_mode1_actions_index_free_text_and_unknown_index(tiny_checkpoint):
    result = run(["interact", "--model", tiny_checkpoint, "--mode", "1", "--num_turns", "2", "--max-new-tokens", "5"],
                 b"42\n1\ni have a cat .\nask about the weather.\nit is sunny .\n")
    assert result.exit_code == 0, result.output
    assert "There is no action 42" in result.output
    assert "Bot [ask about pets.]:" in result.output
    assert "Bot [ask about the weather.]:" in result.output
    assert "10  talk about politics." in result.output


def test_compile_flag_gives_the_same_greedy_chat(tiny_checkpoint):
    script = b"1\ni have a cat .\n4\ni like to swim .\n"
    args = ["interact", "--model", tiny_checkpoint, "--mode", "1", "--num_turns", "2", "--max-new-tokens", "6",
            "--greedy"]
    eager, compiled = run(args, script), run(args + ["--compile"], script)
    assert compiled.exit_code == 0, compiled.output
    assert "one-off compilation" in compiled.stderr
    assert compiled.stdout == eager.stdout
    assert compiled.stdout.count("Bot [") == 2


def test_random_persona_and_persona_file(tiny_checkpoint, tmp_path):
    facts = tmp_path / "facts.txt"
    facts.write_text("i love jazz.\ni play the sax.\n")
    result = run(["interact", "--model", tiny_checkpoint, "--persona-file", facts, "-turns", "1",
                  "--max-new-tokens", "4"], b"hi\n")
    assert "Persona: i love jazz. i play the sax." in result.output
    result = run(["interact", "--model", tiny_checkpoint, "--random-persona", "--personas-path",
                  PERSONACHAT / "personas_train.jsonl", "-turns", "1", "--max-new-tokens", "4", "--seed", "1"], b"hi\n")
    assert result.exit_code == 0 and "Persona: " in result.output


@pytest.mark.parametrize("args, stdin, message", [
    (["--persona", " "], b"", "persona facts must not be empty"),
    (["--persona-file", "/nonexistent/facts.txt"], b"", "no such file"),
    (["--persona", "a.", "--random-persona"], b"", "only one of"),
    (["--top_p", "0"], b"hi\n", "top_p"),
    ([], b"\n\n", "no persona facts given"),
])
def test_bad_input_clear_error(tiny_checkpoint, args, stdin, message):
    result = run(["interact", "--model", tiny_checkpoint, *args], stdin)
    assert result.exit_code == 2
    assert message in result.output


def test_long_message_non_utf8_and_eof(tiny_checkpoint):
    stdin = ("x " * 10_000 + "\n").encode() + b"\xff\xfe bad\nhello\n"
    result = run(["interact", "--model", tiny_checkpoint, "--persona", "i like dogs.", "-turns", "3",
                  "--max-new-tokens", "4"], stdin)
    assert result.exit_code == 0, result.output
    assert "too long" in result.output
    assert "not valid UTF-8" in result.output
    assert result.output.count("Bot: ") == 1  # then EOF ends the chat cleanly
    assert "Goodbye." in result.output


def test_no_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr("personagpt.models.load.BUNDLED_MODEL", tmp_path / "none")
    result = run(["interact", "--persona", "i like dogs."])
    assert result.exit_code == 2
    assert "no --model given" in result.output and "--model" in result.output


def test_bad_model_fails_before_asking_for_facts(tmp_path):
    result = run(["interact", "--model", str(tmp_path / "missing")], b"i like dogs.\n\nhi\n")
    assert result.exit_code == 2
    assert "Fact 1" not in result.output and "Error:" in result.output


def test_selfplay_table_and_jsonl(tiny_checkpoint, tmp_path):
    out = tmp_path / "sp.jsonl"
    result = run(["selfplay", "--model", tiny_checkpoint, "--num-convos", "3", "-turns", "2", "--max-new-tokens", "5",
                  "--actions", "1", "--actions", "talk about cats.", "--seed", "0", "--out", out,
                  "--personas-path", PERSONACHAT / "personas_train.jsonl"])
    assert result.exit_code == 0, result.output
    for word in ("Role", "Action", "Response", "Interviewer", "PersonaGPT", "ask about pets.", "talk about cats."):
        assert word in result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3
    for record in records:
        assert len(record["turns"]) == 4 and 3 <= len(record["p2_facts"]) <= 5
        assert record["actions"] == ["ask about pets.", None, "talk about cats.", None]


def test_selfplay_unknown_action_index(tiny_checkpoint):
    result = run(["selfplay", "--model", tiny_checkpoint, "--actions", "11"])
    assert result.exit_code == 2 and "There is no action 11" in result.output


def _read_until(proc, marker: bytes, count: int = 1, timeout: float = 60) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while seen.count(marker) < count and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
    return seen


def _default_sigint() -> None:
    """Ctrl-C reaches the chat as a user's would, even where the suite runs as a background job (a shell starts
    those with SIGINT ignored, and Python then installs no KeyboardInterrupt handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_mid_conversation_exits_cleanly(tiny_checkpoint):
    proc = subprocess.Popen([sys.executable, "-m", "personagpt.cli", "interact", "--model", str(tiny_checkpoint),
                             "--persona", "i like dogs.", "--max-new-tokens", "4"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_default_sigint)
    try:
        proc.stdin.write(b"hello\n")
        proc.stdin.flush()
        # the reply, then the next prompt: the process is now blocked reading stdin
        assert b"Bot: " in _read_until(proc, b">> User: ", count=2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert b"Interrupted." in err and b"Traceback" not in err


@pytest.fixture(scope="module")
def slow_checkpoint(tmp_path_factory, tokenizer):
    """A random model with a long context: a 1500-token reply takes seconds, time enough to interrupt it."""
    from personagpt.models.load import build_gpt2, save_checkpoint

    model = build_gpt2(tokenizer, n_layer=4, n_embd=128, n_head=2, n_positions=2048)
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("slow") / "model")


def test_ctrl_c_during_a_reply_stops_that_reply_only(slow_checkpoint, tmp_path):
    out = tmp_path / "chat.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "personagpt.cli", "interact", "--model", str(slow_checkpoint),
                             "--persona", "i like dogs.", "--max-new-tokens", "1500", "--seed", "3", "--save",
                             str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_default_sigint)
    try:
        proc.stdin.write(b"hello\n")
        proc.stdin.flush()
        seen = _read_until(proc, b"Bot: ")
        seen += os.read(proc.stdout.fileno(), 64)  # the reply has begun to stream
        proc.send_signal(signal.SIGINT)
        seen += _read_until(proc, b">> User: ")  # the chat goes on: a new prompt
        proc.stdin.write(b"/quit\n")
        proc.stdin.flush()
        rest, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    output = (seen + rest).decode()
    assert proc.returncode == 0, err.decode()
    assert "(reply stopped" in output and "Goodbye." in output and b"Traceback" not in err
    assert "\n(saved 0 turns" in output  # on its own line; the cut-off reply and its message are not saved
    assert json.loads(out.read_text())["turns"] == []
