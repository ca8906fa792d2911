"""``personagpt serve``: the HTTP API (and chat page) over one engine."""

from personagpt.serve.app import create_app
from personagpt.serve.state import ServerSettings

__all__ = ["ServerSettings", "create_app"]
