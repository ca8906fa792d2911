"""Training on tiny models and slices of the real data: masks, losses, resume, phases, LoRA, 2 processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from personagpt.data.dialogues import ControlRecord, Dialogue
from personagpt.data.examples import collate, control_example, persona_examples, plan_batches, prepare
from personagpt.models.load import build_gpt2, load_model, save_checkpoint
from personagpt.train.checkpoints import latest_checkpoint
from personagpt.train.config import TrainConfig, read_config_file
from personagpt.train.loop import train, train_phases

from conftest import PERSONACHAT


@pytest.fixture(scope="module")
def slices(tmp_path_factory):
    """Small real training/validation slices and a little action-code data."""
    root = tmp_path_factory.mktemp("data")
    lines = (PERSONACHAT / "train_self_partial_no_cands.txt").read_text().splitlines(keepends=True)
    (root / "train.txt").write_text("".join(lines[:400]))
    valid = (PERSONACHAT / "valid_both_original_no_cands.txt").read_text().splitlines(keepends=True)
    (root / "valid.txt").write_text("".join(valid[:120]))
    records = [ControlRecord("ask about pets.", ["hi there !"], "do you have any pets ?"),
               ControlRecord("talk about music.", ["hello , how are you ?"], "i love jazz , do you like music ?"),
               ControlRecord("ask about kids.", ["i am fine ."], "do you have any kids ?", ["i have two sons."])]
    with open(root / "ctrl.jsonl", "w") as f:
        for i in range(30):
            f.write(json.dumps(records[i % 3].to_json()) + "\n")
    return root


@pytest.fixture(scope="module")
def base(tmp_path_factory, tokenizer):
    """A tiny GPT-2 checkpoint without dropout (so runs compare exactly) and one with dropout."""
    root = tmp_path_factory.mktemp("base")
    save_checkpoint(build_gpt2(tokenizer, n_layer=2, n_embd=32, dropout=0.0), tokenizer, root / "nodrop")
    save_checkpoint(build_gpt2(tokenizer, n_layer=2, n_embd=32, dropout=0.1), tokenizer, root / "drop")
    return root


def config(tmp_path, slices, base, **overrides) -> TrainConfig:
    settings = dict(model=str(base / "nodrop"), data=[str(slices / "train.txt")], output_dir=str(tmp_path / "run"),
                    max_steps=12, batch_size=4, learning_rate=3e-3, logging_steps=2, save_steps=4,
                    mixed_precision="no", cache_dir=str(tmp_path / "cache"))
    return TrainConfig(**(settings | overrides))


# ---- examples and masks ------------------------------------------------------------------------------------------

def test_loss_mask_token_by_token(fmt):
    dialogue = Dialogue(turns=["hi !", "hello there .", "do you like dogs ?", "yes i do ."],
                        p1_facts=["i like cats."], p2_facts=["i have a dog."])
    p1, p2 = persona_examples(dialogue, fmt, 512)
    turns = [fmt.utterance(t) for t in dialogue.turns]
    for example, speaker, facts in ((p1, 1, dialogue.p1_facts), (p2, 2, dialogue.p2_facts)):
        prefix = fmt.persona_prefix(facts, speaker)
        assert example.ids == prefix + [i for t in turns for i in t]
        expected = [False] * len(prefix)
        for n, t in enumerate(turns):
            expected += [dialogue.speaker_of(n) == speaker] * len(t)
        assert example.targets == expected
    # the eos closing the speaker's turn is a target; the other speaker's eos is not
    end_of_second_turn = len(fmt.persona_prefix(dialogue.p2_facts, 2)) + len(turns[0]) + len(turns[1]) - 1
    assert p2.ids[end_of_second_turn] == fmt.eos_id and p2.targets[end_of_second_turn]
    assert not p2.targets[end_of_second_turn - len(turns[1])]


def test_self_variant_yields_one_example_per_known_persona(fmt):
    dialogue = Dialogue(turns=["a .", "b ."], p2_facts=["i ski."])
    (only,) = persona_examples(dialogue, fmt, 512)
    assert only.ids[0] == fmt.p2_id


def test_long_dialogue_windows_keep_prefix_and_cover_each_target_once(fmt):
    turns = [f"turn number {i} " + "word " * (i % 7 + 3) for i in range(30)]
    dialogue = Dialogue(turns=turns, p1_facts=["i like cats."], p2_facts=["i have a dog."])
    max_length = 80
    prefix = fmt.persona_prefix(dialogue.p2_facts, 2)
    windows = [e for e in persona_examples(dialogue, fmt, max_length) if e.ids[0] == fmt.p2_id]
    assert len(windows) > 1
    target_text = []
    for w in windows:
        assert w.ids[: len(prefix)] == prefix and len(w.ids) <= max_length
        target_text.append(fmt.decode([i for i, t in zip(w.ids, w.targets) if t and i != fmt.eos_id]))
    targets = sum(sum(w.targets) for w in windows)
    assert targets == sum(len(fmt.utterance(t)) for n, t in enumerate(turns) if n % 2 == 1)


def test_control_example_targets_the_response_only(fmt):
    record = ControlRecord("ask about pets.", ["hi there !", "hello ."], "do you have pets ?", ["i love cats."])
    example = control_example(record, fmt, 512)
    context = fmt.goal_prefix(record.goal, record.facts) + fmt.history(record.history)
    assert example.ids == context + fmt.utterance(record.response)
    assert example.targets == [False] * len(context) + [True] * len(fmt.utterance(record.response))
    short = control_example(record, fmt, len(fmt.goal_prefix(record.goal, record.facts)) + 8)
    assert fmt.decode([i for i, t in zip(short.ids, short.targets) if t]) == "do you have pets ?"


def test_collate_labels_and_padding(fmt, slices, tmp_path):
    dataset = prepare([slices / "train.txt"], fmt, 512, cache_dir=tmp_path)
    batch = collate(dataset, [0, 1], 256, fmt.eos_id)
    ids, targets = dataset[1]
    n = len(ids)
    assert batch["input_ids"].shape == (2, 256)
    assert batch["attention_mask"][1].sum() == n
    assert torch.equal(batch["labels"][1, :n][targets], ids[targets].long())
    assert (batch["labels"][1, :n][~targets] == -100).all() and (batch["labels"][1, n:] == -100).all()


def test_prepare_cache_is_reused_and_keyed(fmt, slices, tmp_path):
    first = prepare([slices / "train.txt"], fmt, 512, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    again = prepare([slices / "train.txt"], fmt, 512, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == files and torch.equal(first.ids, again.ids)
    prepare([slices / "train.txt"], fmt, 256, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2


def test_batches_are_deterministic_full_and_few_shapes():
    lengths = [(i * 37) % 480 + 20 for i in range(1000)]
    a = plan_batches(lengths, 8, seed=1, epoch=0, source="persona")
    assert a == plan_batches(lengths, 8, seed=1, epoch=0, source="persona")
    assert a != plan_batches(lengths, 8, seed=1, epoch=1, source="persona")
    assert all(len(b.indices) == 8 for b in a) and len(a) == 125
    assert {b.width for b in a} <= {64, 128, 192, 256, 320, 384, 448, 512}
    assert all(max(lengths[i] for i in b.indices) <= b.width for b in a)


# ---- runs --------------------------------------------------------------------------------------------------------

def test_pretrain_loss_decreases_and_writes_artifacts(tmp_path, slices, base):
    result = train(config(tmp_path, slices, base, max_steps=30, eval_data=str(slices / "valid.txt"), eval_steps=15),
                   progress=False)
    losses = [r["pretrain_loss"] for r in result.stats if "pretrain_loss" in r]
    assert losses[-1] < losses[0] - 0.3
    evals = [r["eval_loss"] for r in result.stats if "eval_loss" in r]
    assert len(evals) == 2 and evals[1] < evals[0]
    out = Path(result.output_dir)
    assert (out / "samples" / "loss.png").stat().st_size > 1000
    assert (out / "stats.csv").read_text().startswith("step,")
    model, tokenizer = load_model(out / "model", device="cpu")
    assert tokenizer.convert_tokens_to_ids("<|act|>") == 50262


def test_train_loop_logs_both_losses(tmp_path, slices, base):
    result = train(config(tmp_path, slices, base, phase="train_loop", ctrl_data=[str(slices / "ctrl.jsonl")],
                          ctrl_ratio=0.5), progress=False)
    logged = set().union(*result.stats)
    assert {"persona_loss", "ctrl_loss"} <= logged and "pretrain_loss" not in logged


def test_both_phases_chain(tmp_path, slices, base):
    result = train_phases(config(tmp_path, slices, base, max_steps=4, ctrl_data=[str(slices / "ctrl.jsonl")]), "both",
                          progress=False)
    assert (tmp_path / "run" / "pretrain" / "model").is_dir() and (tmp_path / "run" / "model").is_dir()
    assert "ctrl_loss" in set().union(*result.stats)


def test_resume_after_kill_reproduces_losses(tmp_path, slices, base):
    args = ["train", "--model", str(base / "drop"), "--data", str(slices / "train.txt"), "--max-steps", "16",
            "--batch-size", "4", "--lr", "3e-3", "--logging-steps", "2", "--save-steps", "4", "--mixed-precision",
            "no", "--cache-dir", str(tmp_path / "cache")]
    cli = [sys.executable, "-m", "personagpt.cli"]
    subprocess.run(cli + args + ["--output-dir", str(tmp_path / "full")], check=True, capture_output=True)
    full = json.loads((tmp_path / "full" / "stats.json").read_text())

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli + args + ["--output-dir", str(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint-8").is_dir() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed_from = latest_checkpoint(killed)
    assert resumed_from is not None and int(resumed_from.name.split("-")[1]) < 16
    # the run's directory alone says what to resume: its saved settings stand in for the original flags
    subprocess.run(cli + ["train", "--output-dir", str(killed), "--resume"], check=True, capture_output=True)
    resumed = json.loads((killed / "stats.json").read_text())
    assert [r["step"] for r in resumed] == [r["step"] for r in full]
    for a, b in zip(full, resumed):
        assert a["pretrain_loss"] == pytest.approx(b["pretrain_loss"], abs=1e-5)


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path, slices, base):
    cfg = config(tmp_path, slices, base, max_steps=400, save_steps=1000)
    proc = subprocess.Popen([sys.executable, "-m", "personagpt.cli", "train", "--model", cfg.model, "--data",
                             cfg.data[0], "--output-dir", cfg.output_dir, "--max-steps", "400", "--save-steps", "1000",
                             "--batch-size", "4", "--cache-dir", cfg.cache_dir, "--mixed-precision", "no"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (Path(cfg.output_dir) / "config.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert b"Traceback" not in err
    assert f"personagpt train --phase pretrain --resume --output-dir {cfg.output_dir}".encode() in out + err
    checkpoint = latest_checkpoint(cfg.output_dir)
    assert checkpoint is not None and 0 < int(checkpoint.name.split("-")[1]) < 400


def test_original_env_keys(tmp_path, slices):
    env = tmp_path / ".env"
    env.write_text(f"save_path={tmp_path / 'out'}\ndata_path={slices}\nepochs=2\nlearn_rate=5e-4\n"
                   "gradient_accumulation_steps=2\nbatch_size=3\nweight_decay=0.01\nlogging_steps=7\nsave_steps=50\n")
    settings = read_config_file(env)
    assert settings["output_dir"] == str(tmp_path / "out") and settings["learning_rate"] == 5e-4
    assert settings["epochs"] == 2 and settings["batch_size"] == 3 and settings["gradient_accumulation_steps"] == 2
    assert settings["weight_decay"] == 0.01 and settings["logging_steps"] == 7 and settings["save_steps"] == 50
    assert sorted(Path(p).name for p in settings["data"]) == ["ctrl.jsonl", "train.txt", "valid.txt"]
    bad = tmp_path / "bad.env"
    bad.write_text("learn_rate=fast\n")
    with pytest.raises(ValueError, match="learning_rate must be a number"):
        read_config_file(bad)


def test_lora_trains_adapter_and_new_token_rows(tmp_path, slices, base):
    result = train(config(tmp_path, slices, base, lora=True, lora_r=4, max_steps=6, learning_rate=1e-2),
                   progress=False)
    adapter = Path(result.output_dir) / "model"
    assert (adapter / "adapter_config.json").is_file()
    tuned, tokenizer = load_model(adapter, device="cpu")
    plain, _ = load_model(base / "nodrop", device="cpu")
    new = torch.tensor([[50261, 50257, 50259]])  # <|p2|> <|sep|> <|start|>
    old = torch.tensor([[40, 588, 6844]])
    with torch.no_grad():
        assert not torch.allclose(tuned.get_input_embeddings()(new), plain.get_input_embeddings()(new))
        assert torch.allclose(tuned.get_input_embeddings()(old), plain.get_input_embeddings()(old))
        assert not torch.allclose(tuned(old).logits, plain(old).logits)


def test_bad_config_is_a_clear_error(tmp_path, slices, base):
    with pytest.raises(ValueError, match="--ctrl-data"):
        train(config(tmp_path, slices, base, phase="train_loop"), progress=False)
    with pytest.raises(ValueError, match="exactly one of --model"):
        train(config(tmp_path, slices, base, from_scratch="2x32"), progress=False)


def test_two_processes_match_one(tmp_path, slices, base):
    common = ["--model", str(base / "nodrop"), "--data", str(slices / "train.txt"), "--max-steps", "6",
              "--lr", "3e-3", "--logging-steps", "1", "--save-steps", "100", "--mixed-precision", "no",
              "--cache-dir", str(tmp_path / "cache")]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                    "-m", "personagpt.cli", "train", *common, "--batch-size", "2", "--output-dir", str(tmp_path / "two")],
                   check=True, capture_output=True, env=env)
    subprocess.run([sys.executable, "-m", "personagpt.cli", "train", *common, "--batch-size", "4", "--output-dir",
                    str(tmp_path / "one")], check=True, capture_output=True, env=env)
    two = json.loads((tmp_path / "two" / "stats.json").read_text())
    one = json.loads((tmp_path / "one" / "stats.json").read_text())
    assert len(two) == len(one) == 6
    for a, b in zip(two, one):
        assert a["pretrain_loss"] == pytest.approx(b["pretrain_loss"], abs=2e-4)
    # both processes ended with the same weights: the saved model equals the single-process one
    m2, _ = load_model(tmp_path / "two" / "model", device="cpu")
    m1, _ = load_model(tmp_path / "one" / "model", device="cpu")
    for (name, p2), (_, p1) in zip(m2.named_parameters(), m1.named_parameters()):
        assert torch.allclose(p2, p1, atol=1e-4), name


def _peak_rss_mb(tmp_path, slices, base, steps: int) -> float:
    code = ("import resource, sys; from personagpt.train.config import TrainConfig; from personagpt.train.loop import train; "
            f"train(TrainConfig(model={str(base / 'drop')!r}, data=[{str(slices / 'train.txt')!r}], "
            f"output_dir={str(tmp_path / f'mem{steps}')!r}, max_steps={steps}, batch_size=4, save_steps=10000, "
            f"logging_steps=50, cache_dir={str(tmp_path / 'cache')!r}), progress=False); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def test_peak_memory_stays_flat_over_hundreds_of_steps(tmp_path, slices, base):
    """With freed memory kept (no trimming) and bucketed shapes, the heap must not creep up step after step."""
    short = _peak_rss_mb(tmp_path, slices, base, 30)
    long = _peak_rss_mb(tmp_path, slices, base, 300)
    assert long - short < 64, (short, long)
