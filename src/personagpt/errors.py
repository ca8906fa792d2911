"""The project's own error types: a mistake in input or settings, reported to a user in one line.

Front ends catch :class:`PersonaGPTError` and print its message; anything else is a bug and keeps its traceback.
"""


class PersonaGPTError(Exception):
    """Caused by input or settings; the message says what to change."""


class SettingsError(PersonaGPTError, ValueError):
    """A setting out of range, or settings that contradict each other."""
