"""Active learning of goals: a person accepts or corrects the bot's steered turns, and the model learns from each.

:class:`OnlineLearner` takes a few gradient steps per new example, mixed with replayed persona and control data so
old skills stay; :class:`TeachSession` is the loop a front end drives (propose a turn, take the verdict, append
it to the corrections file at once, learn).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from collections.abc import Sequence

import torch

from personagpt.data.dialogues import ControlRecord
from personagpt.data.examples import TokenizedDataset, collate, control_example
from personagpt.format import HISTORY_TURNS, MAX_SEQUENCE_LENGTH, PromptFormat
from personagpt.generate.conversation import Conversation, SamplingConfig
from personagpt.scoring import TargetLoss, record_loss

class OnlineLearner:
    """A few gradient steps per new example, mixed with replayed persona and control data so old skills stay.

    Used by ``personagpt teach --update``: each accepted or corrected turn is trained on at once.
    """

    def __init__(self, model, tokenizer, learning_rate: float = 1e-4, steps: int = 3, replay: int = 2,
                 replay_persona: TokenizedDataset | None = None, replay_control: TokenizedDataset | None = None,
                 max_length: int = MAX_SEQUENCE_LENGTH, seed: int = 0) -> None:
        self.fmt = PromptFormat(tokenizer)
        self.model = model
        make_trainable(model)
        self.loss = TargetLoss(model)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
        self.steps, self.replay, self.max_length = steps, replay, max_length
        self.pools = [d for d in (replay_persona, replay_control) if d is not None and len(d)]
        self.rng = random.Random(seed)
        self.updates = 0

    def learn(self, record) -> float:
        """Train on one ``ControlRecord``; returns its loss per target token before the update."""
        example = control_example(record, self.fmt, self.max_length)
        new = TokenizedDataset.from_examples([example])
        before = record_loss(self.model, self.fmt, record, self.max_length)
        self.model.train()
        for _ in range(self.steps):
            batches = [(new, [0])]
            for _ in range(self.replay if self.pools else 0):
                pool = self.rng.choice(self.pools)
                batches.append((pool, [self.rng.randrange(len(pool))]))
            total_targets = sum(d.num_targets(i) for d, i in batches)
            for dataset, indices in batches:
                width = min(self.max_length, max(len(dataset[i][0]) for i in indices))
                inputs = collate(dataset, indices, width, self.fmt.tokenizer.pad_token_id)
                inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
                loss_sum, _ = self.loss(**inputs)
                (loss_sum / total_targets).backward()
            torch.nn.utils.clip_grad_norm_(self.loss.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.model.eval()
        self.updates += 1
        return before


def make_trainable(model) -> None:
    """LoRA models loaded for inference have frozen adapters: unfreeze those (or everything for full models)."""
    names = [n for n, _ in model.named_parameters()]
    adapter = [n for n in names if "lora_" in n or "trainable_tokens" in n]
    for name, param in model.named_parameters():
        param.requires_grad = name in adapter if adapter else True


class TeachSession:
    """One teaching conversation: the bot proposes a turn for a goal, the person accepts or corrects it.

    Every verdict is appended (and fsynced) to ``out`` before learning, so nothing is lost on Ctrl-C.
    """

    def __init__(self, model, fmt: PromptFormat, out: str | os.PathLike, facts: Sequence[str] = (),
                 learner: OnlineLearner | None = None, sampling: SamplingConfig | None = None,
                 seed: int | None = None) -> None:
        self.fmt, self.facts, self.learner = fmt, list(facts), learner
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.bot = Conversation.with_goal(model, fmt, "talk about work.", self.facts, sampling=sampling, seed=seed)
        self.taught = 0
        self._pending: tuple[str, list[str]] | None = None

    def propose(self, goal: str) -> str:
        """The bot's turn pursuing ``goal``."""
        self.bot.set_goal(goal, self.facts)
        self._pending = (goal, list(self.bot.turns[-HISTORY_TURNS:]))
        return self.bot.respond()

    def verdict(self, correction: str = "") -> tuple[ControlRecord, float | None]:
        """Accept the proposed turn (empty ``correction``) or replace it; saves the example, learns from it.

        Returns the record and, when learning, its loss per token before the update."""
        if self._pending is None:
            raise RuntimeError("propose a turn first")
        goal, history = self._pending
        self._pending = None
        if correction.strip():
            self.bot.replace_last(correction)
        record = ControlRecord(goal=goal, history=history, response=self.bot.turns[-1], facts=list(self.facts))
        with open(self.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(record.to_json()) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.taught += 1
        before = None
        if self.learner is not None:
            before = self.learner.learn(record)
            self.bot.invalidate_cache()
        return record, before

    def partner_says(self, text: str) -> None:
        """The person's answer as the bot's partner (raises ContextOverflowError when too long)."""
        self.bot.add_turn(text)
