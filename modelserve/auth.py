"""API keys: who may call a route.

A key file holds one key per line, or `sha256:<hex>` of a key (so the file need not hold the
key itself); blank lines and `#` comments are skipped. Only SHA-256 digests leave the
controller: they travel in the section's `user_config`, so rotating keys (edit the file,
re-apply) updates replicas in place. A presented key is hashed and compared with every digest
in constant time; it is never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from pathlib import Path

from modelserve.errors import Unauthorized

DIGEST_PREFIX = "sha256:"
MIN_KEY_LENGTH = 16
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAKE_A_KEY = 'python -c "import secrets; print(secrets.token_urlsafe(32))" >> api_keys.txt'


class KeyFileError(ValueError):
    """The key file cannot be used; the message says why and what to do."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read_key_file(path: Path) -> tuple[str, ...]:
    """The SHA-256 digests of the keys in `path`, sorted.

    Raises:
        KeyFileError: unreadable, no key in it, a malformed digest, or a key too short to be safe.
    """
    if path.exists() and not path.is_file():  # a FIFO or /dev/stdin would block `check` forever
        raise KeyFileError(f"{path} is not a regular file; name a text file of keys")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read {path}: {exc}") from None
    digests = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(DIGEST_PREFIX):
            value = line[len(DIGEST_PREFIX) :].lower()
            if not _HEX64.match(value):
                raise KeyFileError(f"{path} line {number}: `sha256:` must be followed by 64 hex digits")
            digests.add(value)
        elif len(line) < MIN_KEY_LENGTH or any(c.isspace() for c in line):
            raise KeyFileError(
                f"{path} line {number}: a key must be at least {MIN_KEY_LENGTH} characters without spaces; "
                f"make one with: {MAKE_A_KEY}"
            )
        else:
            digests.add(digest(line))
    if not digests:
        raise KeyFileError(f"{path} holds no key; add one with: {MAKE_A_KEY}")
    return tuple(sorted(digests))


def presented_key(headers: Mapping[str, str]) -> str:
    """The key a request carries: `Authorization: Bearer <key>`, or `x-api-key: <key>`; "" if none."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key", "").strip()


def require_key(headers: Mapping[str, str], digests: tuple[str, ...]) -> None:
    """Raises Unauthorized unless the request carries one of the keys (a no-op when `digests` is empty)."""
    if not digests:
        return
    key = presented_key(headers)
    presented = digest(key)
    matched = False
    for known in digests:  # every digest compared: the time taken does not depend on which matched
        matched |= hmac.compare_digest(presented, known)
    if not key or not matched:
        raise Unauthorized(
            "a valid API key is required: send `Authorization: Bearer <key>` or `x-api-key: <key>`"
            if not key
            else "the API key is not valid for this route",
            headers={"WWW-Authenticate": 'Bearer realm="modelserve"'},
        )
