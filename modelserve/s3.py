"""The S3 client every object-store read goes through (boto3, from the standard AWS environment), and its
errors in plain words."""

from __future__ import annotations

from typing import Any

from modelserve.errors import ModelStoreError

#: S3 requests fail fast: `check` must say "endpoint unreachable" in seconds, not minutes
#: (2 attempts of a 2 s connect or a 2 s wait for an answer, a backoff: under 7 s for a store that never answers).
CONNECT_TIMEOUT_S = 2
LIST_TIMEOUT_S = 2
ATTEMPTS = 2


def s3_client(read_timeout_s: float) -> Any:
    """A boto3 S3 client from the standard AWS environment, with short timeouts and few retries.

    `read_timeout_s` is how long one read of the answer may wait (a download's chunk, a listing).
    """
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=read_timeout_s,
        retries={"max_attempts": ATTEMPTS, "mode": "standard"},
    )
    return boto3.session.Session().client("s3", config=config)


def store_error(uri: str, exc: Exception) -> ModelStoreError:
    """A boto3/botocore exception -> ModelStoreError naming the URI and the cause in plain words."""
    from botocore.exceptions import (
        ConnectionClosedError,
        ConnectionError,
        FlexibleChecksumError,
        IncompleteReadError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
        ResponseStreamingError,
    )

    code = code_of(exc)
    if isinstance(exc, (IncompleteReadError, ResponseStreamingError, FlexibleChecksumError)):
        cause = f"the download was cut or corrupted ({exc}); try again"
    elif isinstance(exc, (ConnectionError, ReadTimeoutError, ConnectionClosedError)):
        cause = f"endpoint unreachable ({exc}); check AWS_ENDPOINT_URL and that the store is up"
    elif isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        cause = "no AWS credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
    elif code in ("404", "NoSuchKey"):
        cause = "no such key"
    elif code == "NoSuchBucket":
        cause = f"no such bucket {uri[len('s3://') :].split('/', 1)[0]!r}"
    elif code in ("403", "AccessDenied", "AllAccessDisabled"):
        cause = "access denied; the credentials may not read this bucket or key"
    elif code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
        cause = f"the credentials were refused ({code}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    elif code in ("412", "PreconditionFailed"):
        cause = "the object changed since it was resolved (another ETag); apply again to serve the new one"
    else:
        cause = f"{type(exc).__name__}: {exc}"
    return ModelStoreError(f"{uri}: {cause}")


def code_of(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
