"""PersonaGPT: persona-conditioned, controllable open-domain dialogue."""

from personagpt.format import DEFAULT_ACTIONS, SPECIAL_TOKENS, PromptFormat, add_special_tokens

__version__ = "0.1.0"
__all__ = ["DEFAULT_ACTIONS", "SPECIAL_TOKENS", "PromptFormat", "add_special_tokens", "__version__"]
