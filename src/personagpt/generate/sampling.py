"""Decoding settings (no torch here: the command line builds them before any model loads; the token step that
reads them is :mod:`personagpt.generate.loop`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from personagpt.errors import SettingsError
from personagpt.format import PromptFormat


# What the front ends (interact, selfplay, teach, auth, the server and its page) use unless told otherwise, chosen by
# measurement (docs/character.md, "Defaults"): one sample in persona mode (best-of-N, opt-in there, buys F1 at 2x
# the turn and 4-8x the first text); in goal mode one sample with goal guidance 1.5 (on the bundled model's guided
# self-training pass, control 72% unguided -> 89%: as much as the best of 2 samples at 2.5 gave the model before,
# without best-of-N's wait); the answer rule with yes/no first (questions about the persona: 58% -> 100% answered
# as its facts say; another thing of a fact's kind: 54% -> 96%). The library's SamplingConfig stays plain but for
# the answer rule: what a caller asks for is what runs.
DEFAULT_CANDIDATES = 1
DEFAULT_GOAL_CANDIDATES = 1  # --goal-candidates 2: the best of 2 guided samples, chosen after 8 tokens
DEFAULT_COMMIT_TOKENS = 8  # best-of-N, when asked for: choose after this many tokens
DEFAULT_GOAL_GUIDANCE = 1.5
DEFAULT_PERSONA_GUIDANCE = 1.0
DEFAULT_YES_NO_FIRST = True
MAX_GUIDANCE = 8.0  # beyond this the guided logits are mostly the difference: replies stop being sentences


@dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings. Defaults are the original PersonaGPT's (top-k 10, nucleus 0.92)."""

    do_sample: bool = True
    top_k: int = 10
    top_p: float = 0.92
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    # OpenAI's penalties over the reply's own tokens so far: logit -= frequency * count + presence * (count > 0)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_new_tokens: int = 64
    min_new_tokens: int = 0  # eos is banned before this many tokens (benchmarks that need fixed-length turns)
    num_beams: int = 1
    num_candidates: int = 1  # > 1: sample this many replies from one prefix and keep the best (best_of_n.py)
    goal_candidates: int | None = None  # num_candidates for a turn that pursues a goal (None: the same)
    commit_tokens: int = 0  # best-of-N: choose after this many tokens and stream the rest (0: after whole replies)
    # classifier-free guidance (generate/loop.py): logits = guide + g * (prompt - guide), where the guide is the
    # prompt without its goal (goal mode) or without its persona facts (persona mode); 1: off
    goal_guidance: float = 1.0
    persona_guidance: float = 1.0
    # a yes/no question about the persona (one of its facts, or a thing of the same kind it does not have) may not be
    # answered against the persona: the opening words that would are banned (generate/consistency.py)
    consistent_answers: bool = True
    yes_no_first: bool = False  # and such an answer opens with the yes or no the persona implies
    # set per turn by Conversation.turn_sampling, not by users: token sequences a reply may not open with
    opening_ban: tuple[tuple[int, ...], ...] = ()
    opening_only: tuple[int, ...] = ()  # the only first tokens allowed (yes_no_first)

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise SettingsError("top_k must be >= 0")
        if not 0 < self.top_p <= 1:
            raise SettingsError("top_p must be in (0, 1]")
        if self.temperature <= 0:
            raise SettingsError("temperature must be > 0")
        if self.repetition_penalty <= 0:
            raise SettingsError("repetition_penalty must be > 0")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise SettingsError(f"{name} must be between -2 and 2")
        if self.max_new_tokens < 1:
            raise SettingsError("max_new_tokens must be >= 1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise SettingsError("min_new_tokens must be between 0 and max_new_tokens")
        if self.num_beams < 1:
            raise SettingsError("num_beams must be >= 1")
        if self.num_candidates < 1:
            raise SettingsError("num_candidates must be >= 1")
        if self.goal_candidates is not None and self.goal_candidates < 1:
            raise SettingsError("goal_candidates must be >= 1")
        if self.commit_tokens < 0:
            raise SettingsError("commit_tokens must be >= 0")
        for name in ("goal_guidance", "persona_guidance"):
            if not 0 <= getattr(self, name) <= MAX_GUIDANCE:
                raise SettingsError(f"{name} must be between 0 and {MAX_GUIDANCE:g} (1: no guidance)")
        if self.num_beams > 1 and (self.goal_guidance != 1 or self.persona_guidance != 1):
            raise SettingsError("guidance samples token by token; use it without beams")
        if self.num_beams > 1 and (self.presence_penalty or self.frequency_penalty):
            raise SettingsError("presence and frequency penalties apply to sampling and greedy decoding, not beams")
        if self.num_candidates > 1 and self.num_beams > 1:
            raise SettingsError("use either candidates (reranked sampling) or beams, not both")

    @property
    def guided(self) -> bool:
        """Whether either guidance is on (a guided sequence takes a second batch row)."""
        return self.goal_guidance != 1 or self.persona_guidance != 1

    @property
    def most_candidates(self) -> int:
        """The most samples a turn takes side by side, in either mode (what an engine's batch is sized for)."""
        return max(self.num_candidates, self.goal_candidates or 1)

    def for_goal(self) -> SamplingConfig:
        """These settings for a turn that pursues a goal: ``goal_candidates`` samples where set (greedy: one)."""
        if self.goal_candidates is None:
            return self
        return replace(self, num_candidates=self.goal_candidates if self.do_sample else 1, goal_candidates=None)

    def generate_kwargs(self, fmt: PromptFormat) -> dict:
        kwargs = asdict(self)
        del kwargs["goal_candidates"]
        del kwargs["num_candidates"], kwargs["commit_tokens"], kwargs["goal_guidance"], kwargs["persona_guidance"]
        del kwargs["presence_penalty"], kwargs["frequency_penalty"], kwargs["consistent_answers"], kwargs["opening_ban"]
        del kwargs["yes_no_first"], kwargs["opening_only"]
        if not self.do_sample:
            del kwargs["top_k"], kwargs["top_p"], kwargs["temperature"]
        return kwargs | {
            "eos_token_id": fmt.eos_id,
            "pad_token_id": fmt.tokenizer.pad_token_id,
            # the added tokens delimit prompts; they never belong inside an utterance
            "suppress_tokens": list(fmt.special_ids),
        }


GREEDY = SamplingConfig(do_sample=False)


FRONT_END_DEFAULTS = SamplingConfig(num_candidates=DEFAULT_CANDIDATES, goal_candidates=DEFAULT_GOAL_CANDIDATES,
                                    commit_tokens=DEFAULT_COMMIT_TOKENS,
                                    goal_guidance=DEFAULT_GOAL_GUIDANCE, persona_guidance=DEFAULT_PERSONA_GUIDANCE,
                                    yes_no_first=DEFAULT_YES_NO_FIRST)
