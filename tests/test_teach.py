"""Active learning: corrections are saved as they come, and teaching a new goal raises its likelihood."""

import json

from typer.testing import CliRunner

from personagpt.cli import app
from personagpt.data.dialogues import ControlRecord, load_control_records
from personagpt.models.load import load_model
from personagpt.scoring import record_loss

from conftest import PERSONACHAT

runner = CliRunner()
GOAL = "talk about dinosaurs."
TAUGHT = [ControlRecord(GOAL, ["hi , how are you ?"], "i love dinosaurs , the t rex is my favorite ."),
          ControlRecord(GOAL, ["what do you like ?"], "dinosaurs ! i dig for fossils every summer ."),
          ControlRecord(GOAL, [], "have you ever seen a dinosaur skeleton in a museum ?")]


def test_teaching_a_new_goal_raises_its_likelihood(tmp_path, tiny_checkpoint):
    corrections = tmp_path / "corrections.jsonl"
    corrections.write_text("".join(json.dumps(r.to_json()) + "\n" for r in TAUGHT * 2))
    replay = tmp_path / "replay.txt"
    replay.write_text("".join((PERSONACHAT / "train_self_partial_no_cands.txt").read_text().splitlines(True)[:60]))
    model, tokenizer = load_model(tiny_checkpoint, device="cpu")
    from personagpt.format import PromptFormat

    fmt = PromptFormat(tokenizer)
    before = [record_loss(model, fmt, r) for r in TAUGHT]
    result = runner.invoke(app, ["teach", "--model", str(tiny_checkpoint), "--from-file", str(corrections), "--update",
                                 "--steps", "3", "--lr", "3e-3", "--save-to", str(tmp_path / "taught"),
                                 "--replay-data", str(replay), "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert result.output.count("loss") == 6
    taught, _ = load_model(tmp_path / "taught", device="cpu")
    after = [record_loss(taught, fmt, r) for r in TAUGHT]
    assert all(a < b - 0.5 for a, b in zip(after, before)), (before, after)


def test_interactive_teaching_appends_each_example(tmp_path, tiny_checkpoint):
    out = tmp_path / "c.jsonl"
    stdin = b"ask about volcanoes.\n\ni like rocks .\n1\ndo you have a dog ?\n"  # accept, answer, correct, then EOF
    result = runner.invoke(app, ["teach", "--model", str(tiny_checkpoint), "--out", str(out), "--max-new-tokens",
                                 "5", "--update", "--steps", "1", "--save-to", str(tmp_path / "m")], input=stdin)
    assert result.exit_code == 0, result.output
    records = load_control_records(out)
    assert [r.goal for r in records] == ["ask about volcanoes.", "ask about pets."]
    assert records[1].response == "do you have a dog ?"
    assert records[1].history[-1] == "i like rocks ."
    assert (tmp_path / "m" / "model.safetensors").is_file()
