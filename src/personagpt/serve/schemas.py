"""Request and response bodies of the HTTP API: the OpenAI chat schema plus PersonaGPT's extensions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from personagpt.format import DEFAULT_ACTIONS
from personagpt.generate.sampling import FRONT_END_DEFAULTS, MAX_GUIDANCE

MAX_FACTS = 5
MAX_REPLY_TOKENS = 256


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="system (or developer, its newer name): the bot's persona facts; user and assistant alternate.")
    content: str = Field(description="The text, or a list of text parts ([{\"type\": \"text\", \"text\": ...}]).")

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, content):
        """OpenAI's list of content parts, joined; only text parts exist for this model."""
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise ValueError(f"only text parts ({{\"type\": \"text\", \"text\": \"...\"}}) are supported, "
                                     f"not {kind!r}: the model reads text only")
                texts.append(part["text"])
            return "\n".join(texts)
        return content

    @field_validator("role", mode="after")
    @classmethod
    def _developer_is_system(cls, role):
        return "system" if role == "developer" else role


# OpenAI request fields that would change the answer and that this server cannot honour, with the values that
# mean "not used" (those pass). Anything else unknown (user, metadata, store, ...) is ignored.
UNSUPPORTED = {
    "logit_bias": (None, {}),
    "response_format": (None, {"type": "text"}), "modalities": (None, ["text"]), "audio": (None,),
    "prediction": (None,), "web_search_options": (None,), "best_of": (None, 1), "suffix": (None, ""),
    "echo": (None, False),
}


def unsupported_field(extra: dict) -> str | None:
    """The first field of ``extra`` (a request's unknown fields) that asks for what this server cannot do. Tools
    offered with ``tool_choice`` absent, "auto" or "none" are not: the model may always answer in plain text
    instead of calling one (Open WebUI sends its built-in tools with every chat); only a call it must make is."""
    for name in ("tool_choice", "function_call"):
        if extra.get(name) == "required" or isinstance(extra.get(name), dict):
            return name
    for name, neutral in UNSUPPORTED.items():
        if name in extra and extra[name] not in neutral:
            return name
    return None


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``. The assistant is the persona bot."""

    model_config = ConfigDict(extra="allow")

    messages: list[Message] = Field(description="The conversation so far. A system message gives the bot's persona "
                                                "facts (one per line or sentence; without one, nor the persona "
                                                "field, the bot gets a persona from the packaged list, the same for "
                                                "every turn of a conversation, and the response names it); user "
                                                "and assistant messages alternate and the last one is the user's.")
    model: str | None = Field(None, description="Ignored: the server has one model.")
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, description=(
        f"Longest reply, in tokens (default 64). More than the model writes in a turn ({MAX_REPLY_TOKENS}) is "
        "clamped to that: the reply then ends with finish_reason \"length\" when cut, and the response's "
        "max_tokens_used says the clamp."))
    max_completion_tokens: int | None = Field(None, ge=1, description="The newer name of max_tokens (the smaller "
                                                                      "one wins when both are given).")
    logprobs: bool = Field(False, description="Return each reply token's log-probability (under the model, before "
                                              "sampling settings).")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="With logprobs: this many likeliest "
                                                                    "alternatives per token (0-20).")
    temperature: float | None = Field(None, ge=0, le=2, description="0 decodes greedily (1).")
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = Field(None, description="Up to 4 strings that end the reply (not included).")
    n: int = Field(1, ge=1, le=8, description="Replies to sample side by side, as OpenAI's n (each a plain sample: "
                                               "no best-of-N; at most what the batch holds).")
    persona: list[str] | None = Field(None, max_length=MAX_FACTS,
                                      description="Extension: the bot's persona facts (instead of a system message).")
    card: dict | None = Field(None, description="Extension: a character card (V2 or V3, its JSON object): its "
                                                "prose gives the persona facts (unless the persona field does).")
    goal: str | int | None = Field(None, description="Extension: an action code (its text or index 0-10) or any "
                                                     "free-text goal; the reply pursues it (goal mode).")
    top_k: int | None = Field(None, ge=0, description="Extension: sample from the k likeliest tokens (10).")
    repetition_penalty: float | None = Field(None, gt=0, le=10, description="Extension: > 1 discourages repeats.")
    presence_penalty: float = Field(0.0, ge=-2, le=2, description="OpenAI's: lowers the logit of every token the "
                                                                  "reply has used (by this much, once).")
    frequency_penalty: float = Field(0.0, ge=-2, le=2, description="OpenAI's: lowers the logit of each token by this "
                                                                   "much per time the reply has used it.")
    min_tokens: int = Field(0, ge=0, le=MAX_REPLY_TOKENS, description="Extension (as vLLM's): no end of reply "
                                                                      "before this many tokens (benchmarks).")
    candidates: int = Field(FRONT_END_DEFAULTS.num_candidates, ge=1, le=8, description=(
        "Extension: sample this many replies side by side and keep the one scored best (persona consistency, "
        "goal, repetition, fluency) after `commit_tokens` tokens, then stream it; 1: plain sampling. Left out: 1, "
        f"or {FRONT_END_DEFAULTS.goal_candidates} when the request has a `goal`. Greedy requests (temperature 0) "
        "sample once."))
    goal_guidance: float = Field(FRONT_END_DEFAULTS.goal_guidance, ge=0, le=MAX_GUIDANCE, description=(
        "Extension: classifier-free guidance toward the goal: tokens are sampled from guide + g * (prompt - "
        "guide), the guide being the prompt without the goal; 1: off. Costs one more batch row."))
    persona_guidance: float = Field(FRONT_END_DEFAULTS.persona_guidance, ge=0, le=MAX_GUIDANCE, description=(
        "Extension: classifier-free guidance toward the persona (no goal), the guide being the prompt without "
        "the persona facts; 1: off. Costs one more batch row."))
    consistent_answers: bool = Field(FRONT_END_DEFAULTS.consistent_answers, description=(
        "Extension: a yes/no question about the persona (one of its facts, or a thing of the same kind it does not "
        "have) is never answered against it: the openings that would are not sampled. false: free answers."))
    yes_no_first: bool = Field(FRONT_END_DEFAULTS.yes_no_first, description=(
        "Extension: with consistent_answers, such a question is answered with the yes or no the persona implies "
        "first."))
    commit_tokens: int = Field(FRONT_END_DEFAULTS.commit_tokens, ge=0, le=MAX_REPLY_TOKENS, description=(
        "Extension: with candidates > 1, choose after this many tokens (0: among whole replies, which then "
        "arrive at once)."))

    @field_validator("persona")
    @classmethod
    def _facts_not_empty(cls, facts):
        if facts is not None and any(not f.strip() for f in facts):
            raise ValueError("persona facts must not be empty")
        return facts

    @property
    def asked_limit(self) -> int | None:
        limits = [n for n in (self.max_tokens, self.max_completion_tokens) if n is not None]
        return min(limits) if limits else None

    @property
    def reply_limit(self) -> int | None:
        """The reply's token limit: what was asked, clamped to what a reply can be."""
        return None if self.asked_limit is None else min(self.asked_limit, MAX_REPLY_TOKENS)

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop
        if stops is not None and (len(stops) > 4 or any(not s for s in stops)):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops

    @field_validator("goal", mode="before")
    @classmethod
    def _not_a_bool(cls, goal):
        if isinstance(goal, bool):  # JSON true/false would pass as the index 1/0
            raise ValueError("must be an action code's index (0-10) or a goal's text, not true or false")
        return goal

    @field_validator("goal")
    @classmethod
    def _known_goal(cls, goal):
        return resolve_goal(goal)


class CompletionRequest(BaseModel):
    """``POST /v1/completions``: raw text completion. The prompt is in the model's own format; special tokens
    written in it (``<|p2|>``, ``<|endoftext|>``, ...) are read as such."""

    model_config = ConfigDict(extra="allow")

    prompt: str | list[str] | list[int] = Field(description="The text to continue (or its token ids); a list of "
                                                            "strings may hold one prompt only.")
    model: str | None = Field(None, description="Ignored: the server has one model.")
    stream: bool = False
    max_tokens: int | None = Field(16, ge=1, description=f"Longest completion, in tokens (16; more than "
                                                          f"{MAX_REPLY_TOKENS} is clamped to that).")
    temperature: float | None = Field(None, ge=0, le=2, description="0 decodes greedily (1).")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, description="Extension: sample from the k likeliest tokens (10).")
    repetition_penalty: float | None = Field(None, gt=0, le=10, description="Extension: > 1 discourages repeats.")
    min_tokens: int = Field(0, ge=0, le=MAX_REPLY_TOKENS)
    seed: int | None = None
    stop: str | list[str] | None = Field(None, description="Up to 4 strings that end the completion.")
    n: int = Field(1, ge=1, le=1, description="One completion per request.")
    logprobs: int | None = Field(None, ge=0, le=20, description="Log-probabilities of each token and this many "
                                                                "likeliest alternatives.")
    echo: bool = Field(False, description="Put the prompt in front of the completion.")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, stop):
        return ChatRequest._stop_list(stop)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt):
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise ValueError("one prompt per request (send the others as separate requests)")
            prompt = prompt[0]
        if not prompt:
            raise ValueError("the prompt must not be empty")
        return prompt

    @property
    def asked_limit(self) -> int | None:
        return self.max_tokens

    @property
    def reply_limit(self) -> int | None:
        return None if self.max_tokens is None else min(self.max_tokens, MAX_REPLY_TOKENS)


def resolve_goal(goal: str | int | None) -> str | None:
    """An action index (0-10, also as a string) becomes its action code; text stays as it is."""
    if goal is None:
        return None
    if isinstance(goal, int) or goal.strip().lstrip("+-").isdigit():
        index = int(goal)
        if not 0 <= index < len(DEFAULT_ACTIONS):
            raise ValueError(f"unknown goal index {index}; use 0-{len(DEFAULT_ACTIONS) - 1} or a free-text goal")
        return DEFAULT_ACTIONS[index]
    if not goal.strip():
        raise ValueError("goal must not be empty")
    return goal.strip()


def split_goal_lines(system: str) -> tuple[str, str | None]:
    """A system message without its ``goal: TEXT`` lines (the chat template's convention for engines that cannot
    pass variables), and the first such goal."""
    lines = [line.strip() for line in system.splitlines() if line.strip()]
    goals = [line[5:].strip() for line in lines if line.lower().startswith("goal:")]
    rest = "\n".join(line for line in lines if not line.lower().startswith("goal:"))
    return rest, (goals[0] or None) if goals else None


class SelfPlayRequest(BaseModel):
    """``POST /v1/selfplay``: an interviewer driven by action codes talks with a persona bot."""

    persona: list[str] | None = Field(None, max_length=MAX_FACTS, description="The persona bot's facts "
                                                                               "(default: a random persona).")
    turns: int = Field(4, ge=1, le=16, description="Exchanges (interviewer turn + persona turn).")
    goals: list[str | int] | None = Field(None, description="Interviewer goals per turn, cycled (texts or 0-10).")
    policy: Literal["random", "fixed"] | None = Field(None, description="random (default without goals) or fixed "
                                                                        "(the goals in order).")
    seed: int | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_REPLY_TOKENS)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    candidates: int = Field(FRONT_END_DEFAULTS.num_candidates, ge=1, le=8,
                            description="Best-of-N for both bots' turns, as in chat completions; 1: plain sampling.")
    commit_tokens: int = Field(FRONT_END_DEFAULTS.commit_tokens, ge=0, le=MAX_REPLY_TOKENS)
    stream: bool = False

    @field_validator("goals")
    @classmethod
    def _known_goals(cls, goals):
        return None if goals is None else [resolve_goal(g) for g in goals]

    @field_validator("persona")
    @classmethod
    def _facts_not_empty(cls, facts):
        return ChatRequest._facts_not_empty(facts)
