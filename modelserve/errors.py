"""Errors that carry their HTTP status; `envelope.failure` turns them into JSON."""

from __future__ import annotations

from collections.abc import Mapping


class ModelServeError(Exception):
    """Base of every error modelserve raises on purpose.

    A backend may raise `BadRequest("x must have 64 values")` to answer 400
    instead of 500.
    """

    status_code = 500
    error_type = "InternalError"

    def __init__(self, message: str = "", headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        #: HTTP headers that travel with the error answer (`Allow`, `Retry-After`, ...).
        self.headers = dict(headers or {})


class BadRequest(ModelServeError):
    """The request is wrong: malformed JSON, missing or invalid params (400)."""

    status_code = 400
    error_type = "BadRequest"


class Unauthorized(ModelServeError):
    """The route needs an API key and the request has none, or a wrong one (401)."""

    status_code = 401
    error_type = "Unauthorized"


class NotFound(ModelServeError):
    """No such path under this route (404)."""

    status_code = 404
    error_type = "NotFound"


class MethodNotAllowed(ModelServeError):
    """The section does not accept this HTTP method (405)."""

    status_code = 405
    error_type = "MethodNotAllowed"

    def __init__(self, method: str, allowed: tuple[str, ...]) -> None:
        super().__init__(
            f"{method} is not accepted here; use {', '.join(allowed)} (see `method` in conf.ini)",
            headers={"Allow": ", ".join(allowed)},
        )


class PayloadTooLarge(ModelServeError):
    """The request body is over the section's `max_body_kb` (413)."""

    status_code = 413
    error_type = "PayloadTooLarge"


class Overloaded(ModelServeError):
    """The section's queue is full (503, with `Retry-After`)."""

    status_code = 503
    error_type = "Overloaded"


class Timeout(ModelServeError):
    """The model did not answer within the section's `timeout_s` (504)."""

    status_code = 504
    error_type = "Timeout"


class ModelError(ModelServeError):
    """The backend raised while answering a request (500)."""

    status_code = 500
    error_type = "ModelError"


class ModelLoadError(ModelServeError):
    """The backend could not load its model; the replica must not take traffic."""

    error_type = "ModelLoadError"


class ModelStoreError(ModelServeError):
    """A model file or version cannot be listed or read; the message names the URI and the cause."""
