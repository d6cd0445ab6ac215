"""Errors use cases raise (no HTTP in them); the edge maps each kind to a status in errors.py."""

from __future__ import annotations

from typing import Literal

# What went wrong, in the domain's words. errors.handle_exception maps each to one HTTP status.
ErrorKind = Literal[
    "invalid",  # the input breaks a rule (400)
    "unauthorized",  # no or bad credentials/token (401)
    "forbidden",  # credentials fine, not allowed (403)
    "not_found",  # nothing there, or not the caller's to see (404)
    "conflict",  # the current state forbids it (409)
    "gone",  # it existed and is over: used link, expired request (410)
    "too_many",  # a budget is spent (429)
    "unavailable",  # a dependency is down; try again (503)
]


class DomainError(Exception):
    """A use case refusing: a stable machine code, a message for people, the offending field."""

    kind: ErrorKind = "invalid"

    def __init__(
        self, code: str, message: str, *, field: str | None = None, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s


class Invalid(DomainError):
    kind = "invalid"


class Unauthorized(DomainError):
    kind = "unauthorized"


class Forbidden(DomainError):
    kind = "forbidden"


class NotFound(DomainError):
    kind = "not_found"


class Conflict(DomainError):
    kind = "conflict"


class Gone(DomainError):
    kind = "gone"


class TooMany(DomainError):
    kind = "too_many"


class Unavailable(DomainError):
    kind = "unavailable"
