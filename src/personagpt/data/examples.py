"""Tokenized training examples: building them from dialogues, caching them, and batching them.

One example per (dialogue, speaker with known facts): that speaker's persona prefix, then the dialogue, with the
loss on that speaker's turns only. This encodes each dialogue once per speaker instead of once per turn (the
original re-encoded the growing history for every target turn). Dialogues longer than ``max_length`` are split
into windows that each keep the persona prefix; every target turn is a target in exactly one window.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from personagpt.data.dialogues import ControlRecord, Dialogue, load_control_records, load_dialogues
from personagpt.errors import SettingsError
from personagpt.format import PromptFormat

if TYPE_CHECKING:
    from personagpt.train.config import TrainConfig

CACHE_VERSION = 1  # bump when the example layout changes, so stale caches are rebuilt
IGNORE_INDEX = -100


@dataclass
class Example:
    ids: list[int]
    targets: list[bool]  # True where the token is predicted with loss
    spans: list[tuple[int, int, int]] = field(default_factory=list)  # (turn index, start, end) of target turns


def persona_examples(dialogue: Dialogue, fmt: PromptFormat, max_length: int) -> list[Example]:
    """Examples for each speaker of ``dialogue`` whose facts are known."""
    turns = [fmt.utterance(t) for t in dialogue.turns]
    examples = []
    for speaker in (1, 2):
        facts = dialogue.facts(speaker)
        if facts:
            prefix = fmt.persona_prefix(facts, speaker)
            is_target = [dialogue.speaker_of(i) == speaker for i in range(len(turns))]
            examples += _windows(prefix, turns, is_target, max_length)
    return examples


def control_example(record: ControlRecord, fmt: PromptFormat, max_length: int) -> Example:
    """Action prefix + history (oldest turns dropped to fit) + the response, loss on the response only."""
    prefix = fmt.goal_prefix(record.goal, record.facts)
    response = fmt.utterance(record.response)[: max(1, max_length - len(prefix))]
    history: list[int] = []
    for turn in reversed(record.history):
        ids = fmt.utterance(turn)
        if len(prefix) + len(ids) + len(history) + len(response) > max_length:
            break
        history = ids + history
    context = prefix + history
    return Example(context + response, [False] * len(context) + [True] * len(response))


def _windows(prefix: list[int], turns: list[list[int]], is_target: list[bool], max_length: int) -> list[Example]:
    budget = max_length - len(prefix)
    if budget < 2:
        raise SettingsError(f"max_length {max_length} leaves no room after a {len(prefix)}-token persona prefix")
    examples = []
    start = 0  # first turn that is a target in the next window
    while start < len(turns):
        first = start - 1 if start > 0 and len(turns[start - 1]) + len(turns[start]) <= budget else start
        end, used = first, 0
        while end < len(turns) and used + len(turns[end]) <= budget:
            used += len(turns[end])
            end += 1
        if end == start:  # a single turn longer than the budget: keep its beginning
            first, chunks, flags, end = start, [turns[start][:budget]], [is_target[start]], start + 1
        else:
            chunks = turns[first:end]
            flags = [is_target[i] and i >= start for i in range(first, end)]
        if any(flags):
            ids, targets, spans = list(prefix), [False] * len(prefix), []
            for index, (chunk, flag) in enumerate(zip(chunks, flags), first):
                if flag:
                    spans.append((index, len(ids), len(ids) + len(chunk)))
                ids += chunk
                targets += [flag] * len(chunk)
            examples.append(Example(ids, targets, spans))
        start = end
    return examples


class TokenizedDataset:
    """Examples stored flat (ids, target flags, offsets): compact, fast to save and load."""

    def __init__(self, ids: torch.Tensor, targets: torch.Tensor, offsets: torch.Tensor) -> None:
        self.ids, self.targets, self.offsets = ids, targets, offsets

    @classmethod
    def from_examples(cls, examples: Sequence[Example]) -> TokenizedDataset:
        lengths = torch.tensor([0] + [len(e.ids) for e in examples], dtype=torch.int64)
        return cls(torch.tensor([i for e in examples for i in e.ids], dtype=torch.int32),
                   torch.tensor([t for e in examples for t in e.targets], dtype=torch.bool),
                   lengths.cumsum(0))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> list[int]:
        return (self.offsets[1:] - self.offsets[:-1]).tolist()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.ids[a:b], self.targets[a:b]

    def num_targets(self, indices: Sequence[int] | None = None) -> int:
        if indices is None:
            return int(self.targets.sum())
        return sum(int(self[i][1].sum()) for i in indices)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"ids": self.ids, "targets": self.targets.to(torch.uint8), "offsets": self.offsets}, str(tmp))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> TokenizedDataset:
        t = load_file(str(path))
        return cls(t["ids"], t["targets"].bool(), t["offsets"])


def prepare(paths: Sequence[str | os.PathLike], fmt: PromptFormat, max_length: int, kind: str = "persona",
            cache_dir: str | os.PathLike | None = None, progress: bool = True) -> TokenizedDataset:
    """Tokenize dialogue files (``kind="persona"``) or action-code JSONL (``kind="control"``), with caching.

    The cache key covers the files' contents, the tokenizer's vocabulary, ``max_length`` and the layout
    version, so a cached dataset is reused exactly when it would come out the same.
    """
    if kind not in ("persona", "control"):
        raise SettingsError(f"kind must be 'persona' or 'control', not {kind!r}")
    files = [Path(p) for p in paths]
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"{kind}-{_fingerprint(files, fmt, max_length, kind)}.safetensors"
        if cache_path.is_file():
            return TokenizedDataset.load(cache_path)
    examples: list[Example] = []
    for path in files:
        if kind == "persona":
            items = load_dialogues(path)
            make = lambda d: persona_examples(d, fmt, max_length)  # noqa: E731
        else:
            items = load_control_records(path)
            make = lambda r: [control_example(r, fmt, max_length)]  # noqa: E731
        for item in tqdm(items, desc=f"tokenizing {path.name}", unit=" dialogues" if kind == "persona" else " records",
                         disable=not progress, leave=False):
            examples += make(item)
    if not examples:
        raise SettingsError(f"no training examples in {', '.join(map(str, files))} (no speaker with persona facts?)")
    dataset = TokenizedDataset.from_examples(examples)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        dataset.save(cache_path)
    return dataset


def _fingerprint(files: Sequence[Path], fmt: PromptFormat, max_length: int, kind: str) -> str:
    h = hashlib.sha256(json.dumps([CACHE_VERSION, kind, max_length]).encode())
    vocab = fmt.tokenizer.get_vocab()
    h.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    h.update(str(fmt.tokenizer.eos_token_id).encode())
    for path in files:
        h.update(path.name.encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


# ---- batching ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Batch:
    """A global batch: ``indices`` into the dataset of ``source``, padded to ``width`` tokens."""

    source: str
    indices: tuple[int, ...]
    width: int


def plan_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, source: str,
                 pad_multiple: int = 64, max_length: int = 512) -> list[Batch]:
    """Shuffled batches of similar lengths, widths rounded up to ``pad_multiple`` (few distinct shapes).

    Deterministic in (seed, epoch), so a resumed or multi-process run sees exactly the same batches.
    Incomplete final batches are dropped so every process always has a full slice.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50  # sort within large chunks: similar lengths together, still random overall
    order = [i for c in range(0, len(order), chunk) for i in sorted(order[c:c + chunk], key=lambda i: lengths[i])]
    batches = []
    for b in range(0, len(order) - batch_size + 1, batch_size):
        indices = tuple(order[b:b + batch_size])
        longest = max(lengths[i] for i in indices)
        width = min(max_length, -(-longest // pad_multiple) * pad_multiple)
        batches.append(Batch(source, indices, width))
    rng.shuffle(batches)
    return batches


def collate(dataset: TokenizedDataset, indices: Sequence[int], width: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (IGNORE_INDEX off target tokens)."""
    n = len(indices)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    for row, i in enumerate(indices):
        ids, targets = dataset[i]
        ids, targets = ids[:width].long(), targets[:width]
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.where(targets, ids, IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@dataclass
class Schedule:
    """All micro-batches of the run, as a function of the step: nothing to store, nothing to skip."""

    datasets: dict[str, TokenizedDataset]
    config: TrainConfig
    world_size: int

    def __post_init__(self) -> None:
        self._epochs: dict[int, list[Batch]] = {}
        self.per_epoch = len(self._epoch(0))
        if self.per_epoch < self.config.gradient_accumulation_steps:
            need = self.config.batch_size * self.world_size * self.config.gradient_accumulation_steps
            raise SettingsError(f"too little data: an optimizer step needs {need} examples per epoch")
        self.steps_per_epoch = self.per_epoch // self.config.gradient_accumulation_steps

    def total_steps(self) -> int:
        if self.config.max_steps:
            return self.config.max_steps
        return max(1, int(self.config.epochs * self.steps_per_epoch))

    def step(self, step: int) -> list[Batch]:
        accum = self.config.gradient_accumulation_steps
        epoch, offset = divmod(step, self.steps_per_epoch)
        return self._epoch(epoch)[offset * accum:(offset + 1) * accum]

    def _epoch(self, epoch: int) -> list[Batch]:
        if epoch not in self._epochs:
            self._epochs = {epoch: self._plan(epoch)}  # keep one epoch in memory
        return self._epochs[epoch]

    def _plan(self, epoch: int) -> list[Batch]:
        c = self.config
        global_batch = c.batch_size * self.world_size
        plan = lambda source, salt: plan_batches(  # noqa: E731
            self.datasets[source].lengths(), global_batch, c.seed + salt, epoch, source, c.pad_multiple, c.max_length)
        persona = plan("persona", 0)
        if "control" not in self.datasets or c.ctrl_ratio == 0:
            return persona
        n_ctrl = round(len(persona) * c.ctrl_ratio / (1 - c.ctrl_ratio))
        control: list[Batch] = []
        cycle = 0
        while len(control) < n_ctrl:  # cycle through the (usually smaller) control data, reshuffled each pass
            more = plan_batches(self.datasets["control"].lengths(), global_batch, c.seed + 7919 + cycle,
                                epoch, "control", c.pad_multiple, c.max_length)
            if not more:
                raise SettingsError(f"too little action-code data for a batch of {global_batch}")
            control += more
            cycle += 1
        mixed = persona + control[:n_ctrl]
        random.Random(c.seed * 31 + epoch).shuffle(mixed)
        return mixed
