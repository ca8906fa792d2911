"""Replaying recorded conversations: a model reply at chosen turns, with one KV cache per batch of conversations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from personagpt.format import PromptFormat
from personagpt.generate.kvcache import ReservedCache
from personagpt.generate.loop import Sampler
from personagpt.models.load import context_limit
from personagpt.generate.sampling import SamplingConfig


@dataclass
class Replay:
    """A recorded conversation to replay: at each turn in ``reply_at`` the model writes its own reply from the
    prefix and the gold turns before it (evaluation, data labelling)."""

    prefix: list[int]
    turns: list[list[int]]  # gold utterances, eos included
    reply_at: list[int]

    def length(self) -> int:
        return len(self.prefix) + sum(len(t) for t in self.turns)


@torch.inference_mode()
def generate_replays(model, fmt: PromptFormat, replays: Sequence[Replay], sampling: SamplingConfig | None = None,
                     batch_size: int = 16, progress=None) -> list[list[list[int]]]:
    """Replies (ids, without eos) for every ``reply_at`` turn of every replay, in the replay's order.

    Re-encoding prefix + history for each reply costs a conversation's length squared; here each batch of
    conversations keeps one KV cache and moves through the turns in lockstep: feed the gold turns up to the
    next reply (left-padded, so the cache has masked holes), generate, crop the generated tokens off, go on.
    Each token of the history is encoded once. Replays must fit the model's context with the reply.
    """
    cfg = sampling or SamplingConfig()
    if cfg.num_beams > 1:
        raise ValueError("replayed generation samples or decodes greedily; beams go through generate_batch")
    limit = context_limit(model)
    for replay in replays:
        if replay.length() + cfg.max_new_tokens > limit:
            raise ValueError(f"a replay of {replay.length()} tokens does not fit the {limit}-token context")
    order = sorted(range(len(replays)), key=lambda i: (len(replays[i].reply_at), replays[i].length()))
    out: list[list[list[int]]] = [[] for _ in replays]
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        for row, replies in zip(rows, _replay_batch(model, fmt, [replays[r] for r in rows], cfg, progress)):
            out[row] = replies
    return out


def _replay_batch(model, fmt: PromptFormat, replays: Sequence[Replay], cfg: SamplingConfig, progress):
    device, pad = model.device, fmt.tokenizer.pad_token_id
    sampler = Sampler(fmt, device)
    size = len(replays)
    cache = ReservedCache()
    mask = torch.zeros((size, 0), dtype=torch.long, device=device)
    seen: list[list[int]] = [[] for _ in replays]  # real tokens of each row so far
    fed = [0] * size  # gold turns consumed
    replies: list[list[list[int]]] = [[] for _ in replays]

    def step(tokens: list[list[int]]) -> torch.Tensor:
        """Feed a left-padded chunk (empty rows are all padding); next-token logits of each row."""
        nonlocal mask
        width = max(len(t) for t in tokens)
        ids = torch.tensor([[pad] * (width - len(t)) + t for t in tokens], device=device)
        chunk = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in tokens], device=device)
        real = torch.tensor([len(s) for s in seen], device=device).unsqueeze(1)
        positions = (real + chunk.cumsum(1) - 1).clamp(min=0)
        mask = torch.cat([mask, chunk], 1)
        for row, t in enumerate(tokens):
            seen[row] += t
        return model(ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                     logits_to_keep=1).logits[:, -1].float()

    for k in range(max(len(r.reply_at) for r in replays)):
        chunks = []
        for row, replay in enumerate(replays):
            if k >= len(replay.reply_at):
                chunks.append([])
                continue
            turn = replay.reply_at[k]
            chunks.append((replay.prefix if k == 0 else []) + [i for t in replay.turns[fed[row]:turn] for i in t])
            fed[row] = turn
        logits = step(chunks)
        kept_length, kept_mask, kept_seen = cache.get_seq_length(), mask, [list(s) for s in seen]
        rows = [sampler.row(cfg, seen[r]) if chunk else None for r, chunk in enumerate(chunks)]
        while True:  # the one token step (Sampler); the forward feeds each live row into the shared cache
            picks = sampler.pick(logits, rows)
            live = [row is not None and not row.done for row in rows]
            if not any(live):
                break
            logits = step([[picks[r]] if live[r] else [] for r in range(size)])
        cache.crop(-(cache.get_seq_length() - kept_length))
        mask, seen = kept_mask, kept_seen
        for row, replay in enumerate(replays):
            if k < len(replay.reply_at):
                replies[row].append(rows[row].reply)
        if progress is not None:
            progress(sum(k < len(r.reply_at) for r in replays))
    return replies
