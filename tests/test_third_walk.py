"""The third new-user walk's defects, pinned: a real terminal (a pty) for the chat, the official client for the
server, the command line as a person types it."""

import json
import stat
import subprocess
import sys
import time

import httpx
import openai
import pytest
from typer.testing import CliRunner

from personagpt.cli import app
from personagpt.models.load import build_gpt2
from personagpt.serve import ServerSettings, create_app

from conftest import LiveServer
from test_first_hour import chat_in_a_terminal, run


def test_non_utf8_typed_at_a_terminal_is_asked_again(tiny_checkpoint):
    output = chat_in_a_terminal(["interact", "--model", tiny_checkpoint, "--persona", "i like dogs.", "-turns", "1",
                                 "--max-new-tokens", "3"], [b"caf\xe9 \xff\xfe hello\r", b"hello\r"])
    assert "not valid UTF-8" in output, output
    assert "This is a bug" not in output and "Internal error" not in output
    assert "That was the last of 1 turns" in output


def test_reset_starts_a_new_turn_budget(tiny_checkpoint):
    result = run(["interact", "--model", tiny_checkpoint, "--persona", "i like dogs.", "-turns", "2",
                  "--max-new-tokens", "3"], b"one\n/reset\ntwo\nthree\n")
    assert result.exit_code == 0, result.output
    # one turn, then /reset: a new budget of two turns, so all three messages are answered
    assert result.output.count("Bot:") == 3 and result.output.count("That was the last of 2 turns") == 1
    persona = run(["interact", "--model", tiny_checkpoint, "--persona", "i like dogs.", "-turns", "2",
                   "--max-new-tokens", "3"], b"one\n/persona i like cats.\ntwo\nthree\n")
    assert persona.exit_code == 0, persona.output
    assert persona.output.count("Bot:") == 3  # a new persona is a new conversation: two more turns


def test_the_goal_menu_is_shown_once(tiny_checkpoint):
    result = run(["interact", "--model", tiny_checkpoint, "--mode", "1", "-turns", "2", "--max-new-tokens", "3"],
                 b"1\nok\n/goals\n2\nfine\n")
    assert result.exit_code == 0, result.output
    assert result.output.count("ask about marital status.") == 2  # the first turn, and /goals


@pytest.mark.parametrize("device", ["cuda", "gpu", "cuda:1"])
def test_a_gpu_without_cuda_is_one_line_that_names_the_fix(tiny_checkpoint, device):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run(["interact", "--model", tiny_checkpoint, "--device", device, "--persona", "x."], b"")
    assert result.exit_code == 2  # a user's error
    assert "no CUDA" in result.output and "CUDA build of torch" in result.output
    assert "This is a bug" not in result.output


def test_help_needs_no_torch():
    code = "import sys, personagpt, personagpt.cli; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "personagpt.cli", "--help"], check=True, capture_output=True)
    assert time.perf_counter() - started < 5  # about 0.2 s here; generous for a loaded CI machine


def test_exported_files_are_readable_by_others(tiny_checkpoint, tmp_path):
    result = CliRunner().invoke(app, ["export", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    for path in (tmp_path / "hf").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044, path.name


@pytest.fixture(scope="module")
def keyed(tokenizer, fmt):
    model = build_gpt2(tokenizer, n_layer=2, n_embd=32, n_head=2, n_positions=256)
    settings = ServerSettings(precision="no", max_batch=4, max_queue=8, max_context=256, api_key="sekret",
                              cors_origins=["http://elsewhere.example"])
    with LiveServer(create_app(settings, loader=lambda: (model, fmt))) as live:
        yield live


def test_goal_true_is_not_goal_one_and_errors_name_the_field(keyed):
    client = openai.OpenAI(base_url=keyed.url + "/v1", api_key="sekret", max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="personagpt", messages=messages, extra_body={"goal": True})
    assert error.value.body["param"] == "goal" and "true or false" in error.value.body["message"]
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="personagpt", messages=messages, extra_body={"goal": ["x"]})
    assert error.value.body["param"] == "goal" and ".str" not in error.value.body["message"]
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model="personagpt", prompt=[[1, 2]])
    assert error.value.body["param"].startswith("prompt") and ".str" not in error.value.body["param"]


def test_a_cors_preflight_needs_no_key(keyed):
    response = httpx.options(keyed.url + "/v1/chat/completions", headers={
        "Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://elsewhere.example"
    assert httpx.post(keyed.url + "/v1/chat/completions", json={"messages": []}).status_code == 401


def test_train_interrupted_says_the_exact_command(tmp_path):
    saved = tmp_path / "run"
    saved.mkdir()
    (saved / "config.json").write_text(json.dumps({"data": ["x.txt"], "phase": "pretrain",
                                                   "output_dir": str(saved), "epochs": 3}))
    from personagpt.cli.train import saved_run_settings

    assert saved_run_settings(saved) == {"data": ["x.txt"], "epochs": 3}
    assert saved_run_settings(tmp_path / "nothing") == {}


def test_typing_during_a_reply_waits_for_the_prompt(tmp_path, tokenizer):
    import os
    import pty
    import select

    from personagpt.models.load import save_checkpoint

    model = build_gpt2(tokenizer, n_layer=4, n_embd=128, n_head=2, n_positions=2048)
    slow = save_checkpoint(model, tokenizer, tmp_path / "slow")
    out = tmp_path / "chat.jsonl"
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "personagpt.cli", "interact", "--model", str(slow), "--persona",
                             "i like dogs.", "-turns", "2", "--max-new-tokens", "300", "--seed", "3",
                             "--candidates", "1", "--save", str(out)],
                            stdin=follower, stdout=follower, stderr=follower, env=dict(os.environ, TERM="xterm"),
                            close_fds=True)
    os.close(follower)
    seen = b""

    def read_until(marker: bytes, count: int, timeout: float = 120) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while seen.count(marker) < count and time.monotonic() < deadline:
            if select.select([leader], [], [], 0.2)[0]:
                try:
                    seen += os.read(leader, 4096)
                except OSError:
                    return

    try:
        read_until(b">> ", 1)
        os.write(leader, b"hello\r")
        read_until(b"Bot: ", 1)
        os.write(leader, b"typed ahead")  # while the reply streams
        read_until(b">> ", 2)
        os.write(leader, b"\r")
        read_until(b"Goodbye", 1)
    finally:
        proc.kill()
        os.close(leader)
    text = seen.decode(errors="replace")
    bot_line = text[text.index("Bot: "):text.index(">> ", text.index("Bot: "))]
    assert "typed ahead" not in bot_line, text
    assert json.loads(out.read_text())["turns"][2] == "typed ahead"


def test_a_body_that_is_not_utf8_names_the_body(keyed):
    response = httpx.post(keyed.url + "/v1/chat/completions", content=b'{"messages": "caf\xe9 \xff"}',
                          headers={"Authorization": "Bearer sekret", "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "body" and "JSON" in response.json()["error"]["message"]


def test_help_says_defaults_and_k_is_top_k_everywhere():
    def said(args):  # the help as one line: click wraps it at 80 columns
        return " ".join(run(args).output.split())

    train = said(["train", "--help"])
    assert "[default: 5e-05]" in train and "[default: runs/personagpt]" in train
    assert "as before" not in said(["teach", "--help"])
    interview = said(["auth", "interact", "--help"])
    assert "-K, --candidates" in interview and '{"persona": [...]}' in interview


def test_a_reply_cut_by_a_crash_is_recorded_in_the_models_spacing(tiny_model, fmt):
    """What a transcript saves at a crash is the conversation's record: the cut reply in the model's own spacing
    (as it will be fed back), never the terminal's display spacing."""
    from personagpt.generate.conversation import Conversation, SamplingConfig

    conversation = Conversation.with_persona(tiny_model, fmt, ["i like dogs."], seed=0,
                                             sampling=SamplingConfig(num_candidates=1, max_new_tokens=12))
    conversation.add_turn("hi , how are you ?")
    stream = conversation.stream()
    for _ in range(3):
        next(stream)
    with pytest.raises(RuntimeError):
        stream.throw(RuntimeError("a crash mid-reply"))
    cut = conversation.turns[-1]
    assert len(conversation.turns) == 2 and cut == fmt.decode(conversation.turn_ids[-1][:-1])  # the tokens' own text
