"""The PersonaGPT prompt format: special tokens and the exact persona / action layouts.

Every other module asks this one for token ids, so the layout lives in exactly one place.

Persona mode (the bot speaks as ``p2`` with its facts)::

    <|p2|> fact1 <eos> ... factN <eos> <|sep|> <|start|> turn1 <eos> turn2 <eos> ...

Action mode (the bot is ``p1``, steered by a turn-level goal, optional facts of its own)::

    <|act|> ␣goal <|p1|> [fact <eos> ...] <|sep|> <|start|> turn1 <eos> ...
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from personagpt.errors import SettingsError

# Appended in this order so the ids match the published af1tang/personaGPT checkpoint (50257-50262 on GPT-2).
SPECIAL_TOKENS: tuple[str, ...] = ("<|sep|>", "<|cls|>", "<|start|>", "<|p1|>", "<|p2|>", "<|act|>")
SEP, CLS, START, P1, P2, ACT = SPECIAL_TOKENS

# Named defaults shared by training, teaching, control data and scoring.
MAX_SEQUENCE_LENGTH = 512  # longest training / scoring sequence in tokens
# The context a conversation keeps, in the terminal and on the server alike: the model learned from 512-token
# windows of short dialogues, so a longer history only slows every turn (older turns are dropped to fit).
DEFAULT_CONTEXT = 1024
HISTORY_TURNS = 6  # turns of history kept before an action-code response

# The 11 turn-level goals PersonaGPT was trained with, spelled exactly as in the original action space.
DEFAULT_ACTIONS: tuple[str, ...] = (
    "ask about kids.",
    "ask about pets.",
    "talk about work.",
    "ask about marital status.",
    "talk about travel.",
    "ask about age and gender.",
    "ask about hobbies.",
    "ask about favorite food.",
    "talk about movies.",
    "talk about music.",
    "talk about politics.",
)


# The chat template every tokenizer this project loads or saves carries, so engines that build prompts from OpenAI
# messages (vLLM, TGI, llama.cpp, ``apply_chat_template``) build exactly PromptFormat's ids. The system message
# gives the bot's persona facts, one per line; user and assistant messages are the history; the assistant is the
# persona bot. A goal switches to goal mode: the template variable ``goal``, or, for engines that cannot pass
# variables, a system line ``goal: TEXT``. No generation prompt is needed: the bot speaks after the last eos.
CHAT_TEMPLATE = (
    "{#- PersonaGPT: system = persona facts (one per line; a line 'goal: TEXT' = action mode) -#}\n"
    "{%- set ns = namespace(facts=[], goal=(goal if goal is defined and goal else none)) -%}\n"
    "{%- for message in messages if message['role'] == 'system' -%}\n"
    "{%- for raw in message['content'].split('\\n') -%}\n"
    "{%- set line = raw.strip() -%}\n"
    "{%- if line.lower().startswith('goal:') -%}\n"
    "{%- if ns.goal is none -%}{%- set ns.goal = line[5:].strip() -%}{%- endif -%}\n"
    "{%- elif line -%}{%- set ns.facts = ns.facts + [line] -%}{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- endfor -%}\n"
    "{%- if ns.goal -%}{{ '<|act|> ' + ns.goal.strip() + '<|p1|>' }}{%- else -%}{{ '<|p2|>' }}{%- endif -%}\n"
    "{%- for fact in ns.facts -%}{{ fact + eos_token }}{%- endfor -%}\n"
    "{{- '<|sep|><|start|>' -}}\n"
    "{%- for message in messages if message['role'] != 'system' -%}{{ message['content'].strip() + eos_token }}"
    "{%- endfor -%}\n"
)


def add_special_tokens(tokenizer, model=None) -> int:
    """Add the PersonaGPT tokens (same strings for every tokenizer family) and resize ``model``.

    A tokenizer that already has them (a published or saved checkpoint) keeps its ids. Also gives the tokenizer a
    pad token (its eos) when it has none, and the PersonaGPT :data:`CHAT_TEMPLATE`. Returns how many tokens were
    added.
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    added = 0
    if missing:
        # Tokens are added one call per token so the new ids follow SPECIAL_TOKENS' order exactly.
        for token in missing:
            added += tokenizer.add_special_tokens({"additional_special_tokens": [token]},
                                                  replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template = CHAT_TEMPLATE
    if model is not None:
        resize_embeddings(model, len(tokenizer))
    return added


def resize_embeddings(model, size: int) -> None:
    """Grow the vocabulary to ``size``; new rows start at the mean of the old ones.

    Deterministic on purpose (transformers' mean resizing samples noise): a base model resized at load time
    must be the same model every time an adapter is put on it.
    """
    import torch  # start-up: format is imported by `personagpt --help` and the front door, which need no torch

    old = model.get_input_embeddings().weight.shape[0]
    if old >= size:
        return
    model.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}.values():
            layer.weight[old:] = layer.weight[:old].mean(0)
            if getattr(layer, "bias", None) is not None:
                layer.bias[old:] = 0


class PromptFormat:
    """Token-level builder for PersonaGPT prompts, bound to one tokenizer."""

    def __init__(self, tokenizer) -> None:
        vocab = tokenizer.get_vocab()
        absent = [t for t in SPECIAL_TOKENS if t not in vocab]
        if absent:
            raise SettingsError(f"tokenizer lacks the PersonaGPT tokens {absent}; call add_special_tokens first")
        if tokenizer.eos_token_id is None:
            raise SettingsError("tokenizer has no eos token; PersonaGPT ends every utterance with it")
        self.tokenizer = tokenizer
        self.eos_id: int = tokenizer.eos_token_id
        self.sep_id, self.cls_id, self.start_id, self.p1_id, self.p2_id, self.act_id = (
            vocab[t] for t in SPECIAL_TOKENS)

    @property
    def special_ids(self) -> tuple[int, ...]:
        """The added tokens; never part of a generated utterance."""
        return (self.sep_id, self.cls_id, self.start_id, self.p1_id, self.p2_id, self.act_id)

    def text(self, text: str) -> list[int]:
        """Plain text, no special-token parsing (a user typing ``<|p1|>`` gets no control over the prompt)."""
        return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)

    def utterance(self, text: str) -> list[int]:
        """One utterance or fact: its tokens then eos."""
        return self.text(text.strip()) + [self.eos_id]

    def facts(self, facts: Iterable[str]) -> list[int]:
        return [i for fact in facts for i in self.utterance(fact)]

    def persona_prefix(self, facts: Sequence[str], speaker: int = 2) -> list[int]:
        """``<|pN|> facts <|sep|> <|start|>``: the bot (speaker N, 2 by default) speaks in character."""
        if speaker not in (1, 2):
            raise ValueError(f"speaker must be 1 or 2, not {speaker!r}")
        return [self.p1_id if speaker == 1 else self.p2_id] + self.facts(facts) + [self.sep_id, self.start_id]

    def goal_prefix(self, goal: str, facts: Sequence[str] = ()) -> list[int]:
        """``<|act|> goal <|p1|> [facts] <|sep|> <|start|>``: the bot's next turn pursues ``goal``."""
        goal = goal.strip()
        if not goal:
            raise SettingsError("an action goal must not be empty")
        return [self.act_id] + self.text(" " + goal) + [self.p1_id] + self.facts(facts) + [self.sep_id, self.start_id]

    def goalless_prefix(self, facts: Sequence[str] = ()) -> list[int]:
        """``<|act|> <|p1|> [facts] <|sep|> <|start|>``: the goal prefix with its goal left out (guidance's guide)."""
        return [self.act_id, self.p1_id] + self.facts(facts) + [self.sep_id, self.start_id]

    def history(self, turns: Iterable[str]) -> list[int]:
        return [i for turn in turns for i in self.utterance(turn)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids, without eos or special tokens."""
        ids = list(ids)
        if not ids:  # transformers 5 decodes [] as an empty batch (a list), not ""
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

