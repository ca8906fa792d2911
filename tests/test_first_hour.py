"""What a new user hits in the first hour: each defect found when trying the tool as a newcomer, pinned."""

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from personagpt.cli import app
from personagpt.data.dialogues import PACKAGED_PERSONAS, load_personas, read_facts_file, resolve_personas_path

from conftest import PERSONACHAT, SHARED

runner = CliRunner()


def run(args, stdin=b"", **kwargs):
    result = runner.invoke(app, [str(a) for a in args], input=stdin, **kwargs)
    assert "Traceback" not in result.output
    return result


def test_eval_small_limits_draw_distractors_from_the_whole_split(tiny_checkpoint):
    for limit in ("1", "5"):
        result = run(["eval", "--model", tiny_checkpoint, "--limit", limit, "--metrics", "ppl,hits", "--markdown"])
        assert result.exit_code == 0, result.output
        assert "Hits@1 conv" in result.output and "Note: only" not in result.output


def test_eval_with_too_few_personas_says_so(tiny_checkpoint, tmp_path):
    lines = (PERSONACHAT / "valid_both_original_no_cands.txt").read_text().splitlines(True)
    starts = [i for i, line in enumerate(lines) if line.startswith("1 ")]
    small = tmp_path / "three.txt"
    small.write_text("".join(lines[:starts[3]]))  # three dialogues: six personas, so five distractors at most
    result = run(["eval", "--model", tiny_checkpoint, "--data", small, "--metrics", "hits", "--markdown"])
    assert result.exit_code == 0, result.output
    assert "only 4 distractor personas" in result.output  # the other dialogues' two speakers each


def chat_in_a_terminal(args, keys: list[bytes], timeout: float = 90) -> str:
    """Run ``personagpt ARGS`` on a pseudo-terminal, typing ``keys`` one chunk per prompt."""
    leader, follower = pty.openpty()
    env = dict(os.environ, TERM="xterm", COLUMNS="200")
    proc = subprocess.Popen([sys.executable, "-m", "personagpt.cli", *map(str, args)], stdin=follower,
                            stdout=follower, stderr=follower, env=env, close_fds=True)
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        for chunk in keys:
            while seen.count(b">> ") <= keys.index(chunk) and time.monotonic() < deadline:
                seen += _read(leader)
            os.write(leader, chunk)
        while proc.poll() is None and time.monotonic() < deadline:
            seen += _read(leader)
        seen += _read(leader)
    finally:
        proc.kill()
        os.close(leader)
    return seen.decode(errors="replace")


def _read(fd) -> bytes:
    ready, _, _ = select.select([fd], [], [], 0.2)
    if not ready:
        return b""
    try:
        return os.read(fd, 4096)
    except OSError:
        return b""


def test_arrow_keys_edit_the_line_at_a_terminal(tiny_checkpoint, tmp_path):
    out = tmp_path / "chat.jsonl"
    # "helo", left arrow, "l": readline turns that into "hello"; up arrow recalls it for the second message
    output = chat_in_a_terminal(["interact", "--model", tiny_checkpoint, "--persona", "i like dogs.", "-turns", "2",
                                 "--max-new-tokens", "3", "--save", out],
                                [b"helo\x1b[Dl\r", b"\x1b[A!\r"])
    assert "Goodbye." in output, output
    record = json.loads(out.read_text())
    assert record["turns"][0] == "hello" and record["turns"][2] == "hello !"  # saved in the training style
    assert "^[[D" not in output


def test_turn_limit_is_said_at_the_start_and_the_end(tiny_checkpoint):
    result = run(["interact", "--model", tiny_checkpoint, "--persona", "i like dogs.", "-turns", "1",
                  "--max-new-tokens", "3"], b"hi\n")
    assert result.exit_code == 0
    assert "1 turns (--num-turns to change)" in result.output
    assert "That was the last of 1 turns" in result.output


@pytest.mark.parametrize("choice", [b"-1", b"11", b"+12"])
def test_out_of_range_action_numbers_are_not_goals(tiny_checkpoint, choice):
    result = run(["interact", "--model", tiny_checkpoint, "--mode", "1", "-turns", "1", "--max-new-tokens", "3"],
                 choice + b"\n2\nok\n")
    assert f"There is no action {choice.decode()}" in result.output
    assert f"Bot [{choice.decode()}]" not in result.output and "Bot [talk about work.]" in result.output


def test_personas_work_from_any_directory(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PERSONAGPT_DATA", raising=False)
    assert resolve_personas_path() == PACKAGED_PERSONAS
    packaged = load_personas(PACKAGED_PERSONAS)
    assert len(packaged) > 17_000 and all(3 <= len(p) <= 5 for p in packaged)
    result = run(["selfplay", "--model", tiny_checkpoint, "-turns", "1", "--max-new-tokens", "3", "--seed", "0"])
    assert result.exit_code == 0, result.output
    result = run(["interact", "--model", tiny_checkpoint, "--random-persona", "-turns", "1", "--max-new-tokens",
                  "3"], b"hi\n")
    assert result.exit_code == 0 and "Persona: " in result.output
    missing = run(["selfplay", "--model", tiny_checkpoint, "--personas-path", tmp_path / "nope.jsonl"])
    assert missing.exit_code == 2 and "--personas-path" in missing.output and "PERSONAGPT_DATA" in missing.output
    monkeypatch.setenv("PERSONAGPT_DATA", str(tmp_path / "nodata"))
    bad_env = run(["selfplay", "--model", tiny_checkpoint])
    assert bad_env.exit_code == 2 and "PERSONAGPT_DATA" in bad_env.output and "--personas-path" in bad_env.output
    monkeypatch.setenv("PERSONAGPT_DATA", str(SHARED))
    assert resolve_personas_path() == SHARED / "personachat" / "personas_train.jsonl"


def test_context_budget_checked_before_any_typing(tiny_checkpoint):
    result = run(["interact", "--model", tiny_checkpoint, "-maxlen", "10"], b"i like dogs.\n\nhi\n")
    assert result.exit_code == 2
    assert "Fact 1" not in result.output and "-54" not in result.output
    assert "too small" in result.output and "--max-length" in result.output
    with_facts = run(["interact", "--model", tiny_checkpoint, "-maxlen", "70", "--persona", "i like dogs."])
    assert with_facts.exit_code == 2 and "the persona (" in with_facts.output


def test_a_missing_model_path_says_so(tmp_path):
    for path in ("/nonexistent", "./not/here", str(tmp_path / "missing")):
        result = run(["interact", "--model", path, "--persona", "i like dogs."])
        assert result.exit_code == 2
        assert "no such file or directory" in result.output and "hub" not in result.output.split("(")[0]


def test_help_texts_are_current():
    result = run(["interact", "--help"], env={"COLUMNS": "300"})
    assert "once one ships" not in result.output
    assert "Default: the bundled model" in result.output
    assert "--compile" in result.output and "40 s" in result.output


def test_no_future_warning_from_our_own_loading(tmp_path, tiny_model, tokenizer):
    from peft import LoraConfig, get_peft_model

    from personagpt.models.load import save_checkpoint

    base = save_checkpoint(tiny_model, tokenizer, tmp_path / "base")
    adapter = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["c_attn"], task_type="CAUSAL_LM"))
    adapter.peft_config["default"].base_model_name_or_path = str(base)
    save_checkpoint(adapter, tokenizer, tmp_path / "adapter")
    proc = subprocess.run([sys.executable, "-W", "default", "-m", "personagpt.cli", "interact", "--model",
                           str(tmp_path / "adapter"), "--persona", "i like dogs.", "-turns", "1",
                           "--max-new-tokens", "2"], input=b"hi\n", capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"FutureWarning" not in proc.stderr, proc.stderr.decode()


def test_temperature_zero_points_to_greedy(tiny_checkpoint):
    result = run(["interact", "--model", tiny_checkpoint, "--persona", "a.", "--temperature", "0"])
    assert result.exit_code == 2 and "--greedy" in result.output


def test_persona_file_skips_comments_and_blank_lines(tmp_path, tiny_checkpoint):
    facts = tmp_path / "facts.txt"
    facts.write_text("# my bot\ni love jazz.\n\n  # an indented comment\ni play the sax.\n")
    assert read_facts_file(facts) == ["i love jazz.", "i play the sax."]
    result = run(["interact", "--model", tiny_checkpoint, "--persona-file", facts, "-turns", "1",
                  "--max-new-tokens", "3"], b"hi\n")
    assert "Persona: i love jazz. i play the sax." in result.output


def test_eval_table_is_whole_when_piped(tiny_checkpoint):
    result = run(["eval", "--model", tiny_checkpoint, "--limit", "2", "--metrics", "ppl"], env={"COLUMNS": "60"})
    assert result.exit_code == 0, result.output
    assert str(tiny_checkpoint) in result.output  # the model's full path, not "/tmp/pyt…"
    assert "…" not in result.output


def test_selfplay_shows_each_turn_as_it_comes(tiny_checkpoint):
    result = run(["selfplay", "--model", tiny_checkpoint, "-turns", "2", "--max-new-tokens", "3", "--actions", "1",
                  "--persona", "i like dogs."])
    assert result.exit_code == 0
    progress = result.stderr
    assert "Conversation 1/1 — persona: i like dogs." in progress
    assert "1/2 Interviewer [ask about pets.]:" in progress and "2/2 PersonaGPT:" in progress


def test_reply_streams_token_by_token(tiny_checkpoint):
    proc = subprocess.Popen([sys.executable, "-m", "personagpt.cli", "interact", "--model", str(tiny_checkpoint),
                             "--persona", "i like dogs.", "-turns", "1", "--max-new-tokens", "40",
                             "--greedy"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    proc.stdin.write(b"hello\n")
    proc.stdin.flush()
    chunks = []
    while True:
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=60)
    text = b"".join(chunks)
    assert b"Bot: " in text and b"Goodbye." in text
    assert len(chunks) > 5  # the reply arrived in pieces, flushed as decoded


def test_in_chat_commands_and_save_at_exit(tiny_checkpoint, tmp_path):
    saved, at_exit = tmp_path / "mid.jsonl", tmp_path / "end.jsonl"
    stdin = (b"/help\nhello\n/persona\n/persona i am a pilot. | i fly planes.\nhow are you ?\n"
             b"/save " + str(saved).encode() + b"\n/reset\nhi again\n/bogus\n/quit\nnever read\n")
    result = run(["interact", "--model", tiny_checkpoint, "--persona", "i like dogs.", "--max-new-tokens", "3",
                  "--save", at_exit], stdin)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "/reset" in out and "/save FILE" in out  # the help
    assert "Persona: i like dogs." in out and "Persona: i am a pilot. i fly planes." in out
    assert "unknown command /bogus" in out and "Goodbye." in out
    mid = json.loads(saved.read_text())
    assert mid["turns"][0] == "how are you ?" and len(mid["turns"]) == 2  # /persona started a new conversation
    assert mid["p2_facts"] == ["i am a pilot.", "i fly planes."] and mid["p1_facts"] == []
    end = json.loads(at_exit.read_text())
    assert end["turns"][0] == "hi again" and len(end["turns"]) == 2
    from personagpt.data.dialogues import load_dialogues

    assert load_dialogues(at_exit)[0].p2_facts == ["i am a pilot.", "i fly planes."]  # loadable as data


def test_a_seeded_evaluation_repeats_exactly_and_names_its_precision(tiny_checkpoint, tmp_path):
    rows = []
    for run_index in range(2):
        out = tmp_path / f"eval{run_index}.json"
        result = run(["eval", "--model", tiny_checkpoint, "--limit", "2", "--metrics", "ppl,f1,hits", "--decode",
                      "sample", "--seed", "3", "--out", out, "--markdown"])
        assert result.exit_code == 0, result.output
        assert "Precision " in result.output and "cores)" in result.output
        row = json.loads(out.read_text())["rows"][0]
        row.pop("seconds")
        rows.append(row)
    assert rows[0] == rows[1]
