"""``personagpt serve``: the HTTP API (and chat page) over one engine."""

from personagpt.serve.app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app"]
