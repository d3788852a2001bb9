"""How boto3/botocore failures map onto streaming-wds errors, in one place.

* Not found (``NoSuchKey``, 404) -> :class:`~streaming_wds.errors.ObjectNotFoundError` (or
  :class:`~streaming_wds.errors.ShardNotFoundError` for a listed shard).
* Refused or missing credentials (403, ``AccessDenied``, ``InvalidAccessKeyId``,
  ``SignatureDoesNotMatch``, expired tokens, no credentials at all) ->
  :class:`~streaming_wds.errors.StorageAuthError`; botocore does not retry these.
* ``PreconditionFailed`` (412 on an ``If-Match`` read) -> the object changed:
  :class:`~streaming_wds.errors.ShardChangedError`.
* Anything else from botocore (after its own retries) -> :class:`~streaming_wds.errors.StorageError`.

Messages carry the error code and the server's message, never request headers or credentials.
"""

from __future__ import annotations

import http.client

NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
AUTH = frozenset(
    {
        "403",
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidAccessKeyId",
        "InvalidToken",
        "InvalidSecurity",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
        "UnrecognizedClientException",
    }
)
CHANGED = frozenset({"PreconditionFailed", "412"})
BAD_RANGE = frozenset({"InvalidRange", "416"})


def is_client_error(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError)


def is_botocore_error(exc: BaseException) -> bool:
    from botocore.exceptions import BotoCoreError

    return isinstance(exc, BotoCoreError)


def code(exc: BaseException) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def is_auth_error(exc: BaseException) -> bool:
    """Credentials missing, refused or expired."""
    from botocore.exceptions import NoAuthTokenError, NoCredentialsError, PartialCredentialsError

    seen: BaseException | None = exc
    while seen is not None:  # boto3's transfer manager wraps the ClientError (S3UploadFailedError)
        if isinstance(seen, NoCredentialsError | PartialCredentialsError | NoAuthTokenError):
            return True
        if is_client_error(seen) and code(seen) in AUTH:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_broken_body(exc: BaseException) -> bool:
    """A response body that broke off after the response began: closed, reset, stalled, short.

    botocore retries a request until its response starts, never a body being read, so these
    are resumed by the stream itself.
    """
    from botocore.exceptions import (
        ConnectionClosedError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
    )
    from urllib3.exceptions import HTTPError as URLLib3Error

    broken = (
        ConnectionClosedError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
        URLLib3Error,
        http.client.HTTPException,
        OSError,
    )
    return isinstance(exc, broken)


def reason(exc: BaseException) -> str:
    if is_client_error(exc):
        err = getattr(exc, "response", {}).get("Error", {})
        return f"{err.get('Code', '?')}: {err.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"
