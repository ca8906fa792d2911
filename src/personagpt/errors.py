"""The project's own error types: a mistake in input or settings, reported to a user in one line.

Front ends catch :class:`PersonaGPTError` and print its message; anything else is a bug and keeps its traceback.
"""


class PersonaGPTError(Exception):
    """Caused by input or settings; the message says what to change."""


class SettingsError(PersonaGPTError, ValueError):
    """A setting out of range, or settings that contradict each other."""


class ModelNotFoundError(PersonaGPTError, RuntimeError):
    """The model could not be found locally and could not be downloaded."""


class DataError(PersonaGPTError, ValueError):
    """Malformed input; the message names the file and line."""


class ContextOverflowError(PersonaGPTError, ValueError):
    """The prefix plus the newest turn does not fit in the model's context window."""


class QueueFullError(PersonaGPTError):
    """Too many requests are waiting; try again shortly."""


class RequestCancelled(PersonaGPTError):
    """The request was cancelled before it finished."""


class UserError(PersonaGPTError):
    """A mistake in the command line or input: reported in one line, no traceback."""
