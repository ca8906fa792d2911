"""PersonaGPT: persona-conditioned, controllable open-domain dialogue.

The front door: everything a library user needs, importable from here::

    from personagpt import load_chat_model, Conversation, SamplingConfig

    model, fmt = load_chat_model()  # the bundled model
    bot = Conversation.with_persona(model, fmt, ["i have two dogs.", "i am a nurse."])
    bot.add_turn("hi! what do you do?")
    print(bot.respond())
"""

from __future__ import annotations

import importlib

from personagpt.errors import (ContextOverflowError, DataError, ModelNotFoundError, PersonaGPTError, QueueFullError,
                               RequestCancelled, SettingsError)
from personagpt.format import DEFAULT_ACTIONS, SPECIAL_TOKENS, PromptFormat, add_special_tokens

__version__ = "0.1.0"

# name -> module. Loaded on first use (PEP 562) rather than here: these pull in torch and transformers (about two
# seconds), and `personagpt --help` and the light modules must not pay for that.
_LAZY = {
    "load_chat_model": "personagpt.models.load", "save_model": "personagpt.models.load",
    "SamplingConfig": "personagpt.generate.sampling", "GREEDY": "personagpt.generate.sampling",
    "Conversation": "personagpt.generate.conversation", "TextStream": "personagpt.generate.conversation",
    "Engine": "personagpt.generate.engine", "RerankWeights": "personagpt.generate.best_of_n",
    "GoalLabeler": "personagpt.control.goals", "self_play": "personagpt.control.selfplay",
    "RandomPolicy": "personagpt.control.selfplay", "FixedPolicy": "personagpt.control.selfplay",
    "for_people": "personagpt.text", "to_model": "personagpt.text",
    "load_dialogues": "personagpt.data.dialogues", "load_personas": "personagpt.data.dialogues",
    "TrainConfig": "personagpt.train.config", "train": "personagpt.train.loop",
    "evaluate": "personagpt.eval.evaluate", "create_app": "personagpt.serve.app",
    "ServerSettings": "personagpt.serve.state",
}

__all__ = ["DEFAULT_ACTIONS", "SPECIAL_TOKENS", "PromptFormat", "add_special_tokens", "__version__",
           "PersonaGPTError", "SettingsError", "ModelNotFoundError", "DataError", "ContextOverflowError",
           "QueueFullError", "RequestCancelled", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'personagpt' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
