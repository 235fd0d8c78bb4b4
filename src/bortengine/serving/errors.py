"""The server's errors: each is an HTTP status and a JSON body in OpenAI's shape,

    {"error": {"message": "...", "type": "invalid_request_error", "param": "input", "code": "empty_input"}}

whose message says what is wrong and how to fix it, so that OpenAI's client libraries show it as they show
OpenAI's own errors.
"""
from __future__ import annotations

from typing import Optional

from bortengine.errors import BortEngineError

__all__ = ["APIError", "error_body", "ClientDisconnected"]


class APIError(BortEngineError):
    """A request the server refuses: status (4xx, or 503 while loading or past a deadline), OpenAI's error type,
    the request field at fault (param) and a machine-readable code; headers go on the response (Retry-After,
    WWW-Authenticate, Allow, Connection: close)."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: Optional[str] = None, code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class ClientDisconnected(BortEngineError):
    """The client closed its connection before its answer was ready: its queued work was dropped."""
