"""Learning for authentication: the embedding identifier's head (InfoNCE on training dialogues) and the
interviewer policy (DQN over the 11 goals, in self-play).

Policy learning, as in the paper's companion code, is a DQN: the state is the identifier's view
(:func:`~personagpt.auth.policies.state_features`), the action a goal, the reward the per-turn gain in the true
persona's log-probability among the candidates (so an episode's return is how well the last turn identifies it,
against chance). Episodes are collected in rounds, epsilon-greedy, by whatever ``collect`` plays them (the real
self-play, or a scripted environment in the tests); after each round the network trains on the replay buffer and
everything is checkpointed, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from personagpt.auth.identify import IdentifierHead, PooledEncoder
from personagpt.auth.interview import Episode
from personagpt.auth.policies import LearnedPolicy, QNetwork, state_features
from personagpt.data.dialogues import Dialogue
from personagpt.format import DEFAULT_ACTIONS
from personagpt.train.checkpoints import atomic_torch_save

# ---- the embedding identifier's head --------------------------------------------------------------------------------


@dataclass
class TurnEmbeddings:
    """Per dialogue: the pooled embedding of each of the persona owner's turns, and which persona is theirs."""

    turns: list[torch.Tensor]  # [n turns, width] per dialogue
    persona_index: list[int]
    personas: torch.Tensor  # [distinct personas, width]
    keys: list[tuple[str, ...]]  # the persona of each row of ``personas``

    @classmethod
    def encode(cls, encoder: PooledEncoder, dialogues: Sequence[Dialogue],
               progress: Callable[[int], None] | None = None) -> TurnEmbeddings:
        """Embeddings of p2's turns (the speaker whose persona every split gives) and of p2's persona."""
        keys = list(dict.fromkeys(tuple(d.p2_facts) for d in dialogues if d.p2_facts))
        index = {k: i for i, k in enumerate(keys)}
        personas = encoder.personas([list(k) for k in keys])
        turns, owners = [], []
        for d in dialogues:
            own = d.turns[1::2]
            if d.p2_facts and own:
                turns.append(encoder.turns(own))
                owners.append(index[tuple(d.p2_facts)])
            if progress:
                progress(1)
        return cls(turns, owners, personas, keys)

    @classmethod
    def from_episodes(cls, encoder: PooledEncoder, episodes: Sequence[Episode],
                      progress: Callable[[int], None] | None = None) -> TurnEmbeddings:
        """The same from self-play interviews: the partner's answers and its true persona."""
        return cls.encode(encoder, [Dialogue(e.transcript.turns, [], e.candidates[e.truth]) for e in episodes],
                          progress)

    def __add__(self, other: TurnEmbeddings) -> TurnEmbeddings:
        """Both sets, a persona found in both kept once."""
        index = {k: i for i, k in enumerate(self.keys)}
        new = [k for k in other.keys if k not in index]
        index |= {k: len(self.keys) + i for i, k in enumerate(new)}
        rows = [other.keys.index(k) for k in new]
        return TurnEmbeddings(self.turns + other.turns,
                              self.persona_index + [index[other.keys[i]] for i in other.persona_index],
                              torch.cat([self.personas, other.personas[rows]]), self.keys + new)


def summaries(turns: torch.Tensor) -> torch.Tensor:
    """Running means: row t summarises turns 0..t (what the identifier holds after t + 1 answers)."""
    return turns.cumsum(0) / torch.arange(1, len(turns) + 1).unsqueeze(1)


def identification_hits(head: IdentifierHead, data: TurnEmbeddings, k: int = 20, turns: int = 4,
                        seed: int = 0) -> float:
    """Hits@1 of ``k`` after ``turns`` answers (gold dialogues; distractors: other personas of ``data``)."""
    rng = random.Random(seed)
    hits = total = 0
    with torch.inference_mode():
        for own, owner in zip(data.turns, data.persona_index):
            if len(own) < turns:
                continue
            others = rng.sample([i for i in range(len(data.personas)) if i != owner], k - 1)
            scores = head(summaries(own)[turns - 1:turns], data.personas[[owner] + others])[0]
            hits += bool((scores[0] > scores[1:]).all())
            total += 1
    return hits / max(1, total)


def train_identifier_head(train: TurnEmbeddings, steps: int = 300, batch_size: int = 256, lr: float = 1e-3,
                          seed: int = 0, progress: Callable[[int, float], None] | None = None,
                          dropout: float = 0.0, weight_decay: float = 0.01) -> IdentifierHead:
    """InfoNCE: a summary of one dialogue's first t answers against the batch's personas (one per dialogue, all
    different), its own persona the positive."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    head = IdentifierHead(train.personas.shape[1], dropout=dropout)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    by_persona: dict[int, list[int]] = {}
    for d, owner in enumerate(train.persona_index):
        by_persona.setdefault(owner, []).append(d)
    owners = list(by_persona)
    size = min(batch_size, len(owners))
    head.train()
    for step in range(steps):
        chosen = rng.sample(owners, size)
        rows = []
        for owner in chosen:
            own = train.turns[rng.choice(by_persona[owner])]
            t = rng.randrange(len(own))
            rows.append(own[: t + 1].mean(0))
        logits = head(torch.stack(rows), train.personas[chosen])
        loss = nn.functional.cross_entropy(logits, torch.arange(size))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if progress:
            progress(step, loss.item())
    return head.eval()


# ---- the interviewer policy (DQN) -----------------------------------------------------------------------------------


@dataclass
class DQNConfig:
    rounds: int = 30
    episodes_per_round: int = 16
    updates_per_round: int = 200
    batch_size: int = 64
    gamma: float = 0.9
    lr: float = 1e-3
    epsilon_start: float = 1.0
    epsilon_end: float = 0.1
    target_sync: int = 100  # updates between target-network copies
    seed: int = 0

    def epsilon(self, round_index: int) -> float:
        """Linear decay over the first two thirds of the rounds, then constant."""
        span = max(1, (2 * self.rounds) // 3)
        return max(self.epsilon_end,
                   self.epsilon_start - (self.epsilon_start - self.epsilon_end) * round_index / span)


def transitions(episode: Episode, identifier: str, actions: tuple[str, ...] = DEFAULT_ACTIONS) -> list[tuple]:
    """(state, action index, reward, next state, done) per exchange of a finished episode. The reward is the
    gain in the true persona's log-probability among the candidates; before the first answer all are equal."""
    scores = [torch.zeros(len(episode.candidates))] + [torch.tensor(s) for s in episode.scores[identifier]]
    goals = episode.goals
    out = []
    for t, goal in enumerate(goals):
        before = float(torch.log_softmax(scores[t], 0)[episode.truth])
        after = float(torch.log_softmax(scores[t + 1], 0)[episode.truth])
        out.append((state_features(scores[t], t, goals[:t], actions, episode.candidates), actions.index(goal),
                    after - before, state_features(scores[t + 1], t + 1, goals[:t + 1], actions, episode.candidates),
                    t == len(goals) - 1))
    return out


def td_updates(network: QNetwork, target: QNetwork, optimizer, buffer: Sequence[tuple], rng: random.Random,
               config: DQNConfig, updates: int, steps: int) -> tuple[list[float], int]:
    """``steps`` Huber TD updates on minibatches drawn from ``buffer`` (target: reward + gamma * max Q of the
    target network at the next state; none after the last turn), the target copied every ``target_sync``
    updates. Returns the losses and the running update count."""
    network.train()
    losses = []
    for _ in range(steps if buffer else 0):
        batch = [buffer[rng.randrange(len(buffer))] for _ in range(min(config.batch_size, len(buffer)))]
        states, chosen, rewards, following, done = zip(*batch)
        q = network(torch.stack(states)).gather(1, torch.tensor(chosen).unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            future = target(torch.stack(following)).max(1).values * (1 - torch.tensor(done, dtype=torch.float))
            wanted = torch.tensor(rewards) + config.gamma * future
        loss = nn.functional.smooth_l1_loss(q, wanted)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        updates += 1
        if updates % config.target_sync == 0:
            target.load_state_dict(network.state_dict())
    network.eval()
    return losses, updates


def refit_policy(checkpoint: Path, config: DQNConfig, steps: int, guide: str | None = None,
                 progress: Callable[[int, float], None] | None = None) -> tuple[QNetwork, list[float]]:
    """A fresh Q-network fitted on the replay buffer a :func:`train_policy` run saved (no new self-play): e.g.
    with ``gamma = 0`` it learns each goal's expected gain at the next answer from everything that run played.
    ``guide``: the identifier that run was rewarded by (default: as recorded in the checkpoint). Returns the
    network and the loss per update."""
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file: torch raises whatever its unpickler met
        raise ValueError(f"not a checkpoint of `auth train` ({type(e).__name__})") from None
    guide = guide or saved.get("guide")
    if guide is None:
        raise ValueError(f"{checkpoint} does not record its identifier; name it")
    actions = saved["network"]["net.4.weight"].shape[0]
    torch.manual_seed(config.seed)
    network, target = (QNetwork(actions=actions, guide=guide) for _ in range(2))
    target.load_state_dict(network.state_dict())
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    rng = random.Random(config.seed)
    losses: list[float] = []
    for start in range(0, steps, 100):
        chunk, _ = td_updates(network, target, optimizer, saved["buffer"], rng, config, start, min(100, steps - start))
        losses += chunk
        if progress:
            progress(start + len(chunk), sum(chunk) / max(1, len(chunk)))
    return network, losses


def train_policy(collect: Callable[[LearnedPolicy, int, int], list[Episode]], out: Path, identifier: str,
                 config: DQNConfig = DQNConfig(), actions: tuple[str, ...] = DEFAULT_ACTIONS,
                 resume: bool = True, progress: Callable[[dict], None] | None = None,
                 warm_start: Sequence[Episode] = ()) -> QNetwork:
    """DQN in rounds: ``collect(policy, episodes, round)`` plays episodes with the epsilon-greedy policy; their
    transitions join the replay buffer; the network trains on it. ``out`` gets ``checkpoint.pt`` after every
    round (network, target, optimizer, buffer, log, random state) and ``log.json``; with ``resume`` a run
    continues from there. ``warm_start`` episodes (scored by ``identifier``, e.g. earlier random-goal self-play)
    fill the buffer before the first round: off-policy data a DQN learns from as well as its own."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    network, target = (QNetwork(actions=len(actions), guide=identifier) for _ in range(2))
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    buffer: list[tuple] = []
    log: list[dict] = []
    rng = random.Random(config.seed)
    updates = 0
    checkpoint = out / "checkpoint.pt"
    if resume and checkpoint.exists():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        network.load_state_dict(saved["network"])
        target.load_state_dict(saved["target"])
        optimizer.load_state_dict(saved["optimizer"])
        buffer, log, updates = saved["buffer"], saved["log"], saved["updates"]
        rng.setstate(saved["rng"])
        torch.set_rng_state(saved["torch_rng"])
    else:
        target.load_state_dict(network.state_dict())
        buffer = [t for e in warm_start for t in transitions(e, identifier, actions)]
    for round_index in range(len(log), config.rounds):
        epsilon = config.epsilon(round_index)
        network.eval()
        episodes = collect(LearnedPolicy(network, actions, epsilon, seed=rng.randrange(2**31)),
                           config.episodes_per_round, round_index)
        played = [transitions(e, identifier, actions) for e in episodes]
        buffer += [t for steps in played for t in steps]
        losses, updates = td_updates(network, target, optimizer, buffer, rng, config, updates,
                                     config.updates_per_round)
        returns = [sum(t[2] for t in steps) for steps in played]
        final_hits = [e.ranks(identifier)[-1] == 0 for e in episodes if e.scores[identifier]]
        entry = {"round": round_index + 1, "epsilon": round(epsilon, 3), "episodes": len(episodes),
                 "mean_return": sum(returns) / max(1, len(returns)),
                 "final_hits1": sum(final_hits) / max(1, len(final_hits)),
                 "td_loss": sum(losses) / max(1, len(losses)), "buffer": len(buffer)}
        log.append(entry)
        atomic_torch_save({"network": network.state_dict(), "target": target.state_dict(), "guide": identifier,
                           "optimizer": optimizer.state_dict(), "buffer": buffer, "log": log, "updates": updates,
                           "rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "config": asdict(config)},
                          checkpoint)
        (out / "log.json").write_text(json.dumps(log, indent=1))
        if progress:
            progress(entry)
    return network.eval()


def plot_training(log: Sequence[dict], path: Path) -> Path:
    """Mean episode return and TD loss per round (two panels)."""
    import matplotlib  # start-up: ~0.5 s to import, and only a plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [e["round"] for e in log]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(rounds, [e["mean_return"] for e in log], marker="o", label="mean return")
    left.axhline(0, color="grey", linestyle=":")
    left.set_xlabel("round")
    left.set_ylabel("return (log-prob gain of the truth)")
    right.plot(rounds, [e["td_loss"] for e in log], marker="o", color="tab:red", label="TD loss")
    right.set_xlabel("round")
    right.set_ylabel("Huber TD loss")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

