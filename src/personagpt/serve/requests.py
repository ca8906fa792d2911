"""What a request asks for: the persona, goal and turns of a chat request, its sampling settings, a self-play
policy, and the fields this server refuses. Wrong shapes are 400s that name the problem."""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from personagpt.control.selfplay import FixedPolicy, RandomPolicy
from personagpt.generate.sampling import FRONT_END_DEFAULTS, SamplingConfig
from personagpt.errors import DataError
from personagpt.personas.cards import card_from_json
from personagpt.personas.prompts import facts_from_prompt
from personagpt.serve.errors import ApiError
from personagpt.serve.schemas import ChatRequest, SelfPlayRequest, resolve_goal, split_goal_lines, unsupported_field
from personagpt.text import to_model


def refuse_unsupported(body) -> None:
    name = unsupported_field(body.model_extra or {})
    if name is not None:
        raise ApiError(400, f"{name} is not supported: this server's model writes plain-text replies only; leave "
                            f"{name} out of the request", param=name)


class Conversed(NamedTuple):
    facts: list[str]  # the persona facts used
    turns: list[str]  # the dialogue, in the model's style
    left_out: list[str]  # sentences of the system messages not used as facts (instructions, past the budget)


def conversation_of(body: ChatRequest, personas: list[list[str]]) -> Conversed:
    """(persona facts, turns in the model's style) from the messages; wrong shapes are 400s naming the problem.
    With no persona given, the bot gets one from ``personas``, chosen by the conversation's first message so
    that every turn of one conversation keeps it.

    What chat front ends send is taken as a person meant it: system messages anywhere all give persona facts
    (a later one adds to the persona of the whole conversation); consecutive messages of one role are one turn
    (a front end that dropped a failed reply sends two user messages in a row); a last assistant message is
    continued (see :func:`continues`); system prompts in any style become first-person facts, instructions left
    out, the first five kept (:func:`~personagpt.personas.prompts.facts_from_prompt`)."""
    for i, m in enumerate(body.messages):
        if m.role != "system" and not m.content.strip():
            raise ApiError(400, f"messages[{i}].content is empty: send the {m.role}'s text",
                           param=f"messages[{i}].content")
    system = [m for m in body.messages if m.role == "system"]
    dialogue = []
    for m in (m for m in body.messages if m.role != "system"):
        if dialogue and dialogue[-1][0] == m.role:
            dialogue[-1] = (m.role, dialogue[-1][1] + "\n" + m.content)
        else:
            dialogue.append((m.role, m.content))
    parsed = [split_goal_lines(m.content) for m in system]
    written_goal = next((goal for _, goal in parsed if goal), None)
    if body.goal is None and written_goal:  # the chat template's "goal: TEXT" system line
        try:
            body.goal = resolve_goal(written_goal)
        except ValueError as e:
            raise ApiError(400, str(e), param="messages") from None
    if not body.messages and body.goal is None:
        raise ApiError(400, 'messages is empty: send at least the user\'s message, e.g. [{"role": "user", '
                            '"content": "hi!"}] (only a request with a goal may open the conversation)',
                       param="messages")
    if not dialogue and body.goal is None:
        raise ApiError(400, "no user message: add one (without a goal, the bot answers a user)", param="messages")
    left_out: list[str] = []
    if body.persona is not None:
        facts = body.persona
    elif body.card is not None:
        try:
            taken = card_from_json(body.card, "card").persona()
        except DataError as e:
            raise ApiError(400, str(e), param="card") from None
        facts, left_out = taken.facts, taken.left_out
    else:  # prompts in any style: first-person facts, instructions left out (personas/prompts.py)
        taken = facts_from_prompt("\n".join(text for text, _ in parsed))
        facts, left_out = taken.facts, taken.left_out
    if not facts and body.goal is None and personas:
        opening = dialogue[0][1] if dialogue else ""
        digest = hashlib.sha256(to_model(opening).encode()).digest()
        facts = personas[int.from_bytes(digest[:8], "big") % len(personas)]
    return Conversed([f.strip() for f in facts], [to_model(text) for _, text in dialogue], left_out)


def continues(body: ChatRequest) -> bool:
    """Whether the request asks to continue the assistant's last message ("Continue response" in chat front ends):
    its last non-system message is the assistant's. The reply then extends that message."""
    last = next((m for m in reversed(body.messages) if m.role != "system"), None)
    return last is not None and last.role == "assistant"


def sampling_of(body) -> SamplingConfig:
    """The request's decoding settings; what it leaves out is the front ends' default (self-play's guidance too;
    a goal turn's best-of-N where ``candidates`` is left out)."""
    defaults = FRONT_END_DEFAULTS
    greedy = body.temperature == 0
    min_tokens = getattr(body, "min_tokens", 0)
    limit = getattr(body, "reply_limit", body.max_tokens)
    if min_tokens > (limit or defaults.max_new_tokens):
        raise ApiError(400, "min_tokens must not exceed max_tokens", param="min_tokens")
    return SamplingConfig(do_sample=not greedy, top_k=defaults.top_k if body.top_k is None else body.top_k,
                          top_p=body.top_p or defaults.top_p,
                          temperature=body.temperature if body.temperature else defaults.temperature,
                          repetition_penalty=getattr(body, "repetition_penalty", None) or defaults.repetition_penalty,
                          max_new_tokens=limit or defaults.max_new_tokens, min_new_tokens=min_tokens,
                          num_candidates=getattr(body, "candidates", 1) if not greedy else 1,
                          goal_candidates=None if greedy or "candidates" in getattr(body, "model_fields_set", ())
                          else defaults.goal_candidates,
                          commit_tokens=getattr(body, "commit_tokens", 0),
                          presence_penalty=getattr(body, "presence_penalty", 0.0),
                          frequency_penalty=getattr(body, "frequency_penalty", 0.0),
                          goal_guidance=getattr(body, "goal_guidance", defaults.goal_guidance),
                          persona_guidance=getattr(body, "persona_guidance", defaults.persona_guidance),
                          consistent_answers=getattr(body, "consistent_answers", defaults.consistent_answers),
                          yes_no_first=getattr(body, "yes_no_first", defaults.yes_no_first))


def policy_of(body: SelfPlayRequest):
    if body.policy == "fixed" and not body.goals:
        raise ApiError(400, "the fixed policy needs goals", param="goals")
    return FixedPolicy(body.goals) if body.goals and body.policy != "random" else RandomPolicy(seed=body.seed)


def refuse_local_only(body) -> None:
    """A 400 for what needs PersonaGPT's own engine, on a server that generates with an upstream one."""
    for name, asked in (("candidates", "candidates" in body.model_fields_set and body.candidates > 1),
                        ("logprobs", bool(getattr(body, "logprobs", None)))):
        if asked:
            raise ApiError(400, f"{name} needs PersonaGPT's own engine (it scores with the model's probabilities); "
                                f"this server generates with an upstream engine (--upstream): leave {name} out",
                           param=name)
