"""How clsact reaches S3, shared by the boto3 Store (:mod:`~clsact.storage.s3`) and the
obstore read path (:mod:`~clsact.storage.s3read`): the settings (passed, never global), the
credentials (a mounted Secret's files, else boto3's chain), the endpoint, the error messages
and the retry backoff.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from clsact.errors import StorageError


@dataclass(frozen=True)
class S3Settings:
    """How clsact talks to S3: built from ``Global`` (:meth:`clsact.config.Global.s3`) or a
    command's ``--s3-endpoint`` and passed to every Store that needs it."""

    endpoint_url: str | None = None
    max_attempts: int = 6
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    io_threads: int = 16
    multipart_threshold: int = 64 * 1024 * 1024
    multipart_chunksize: int = 16 * 1024 * 1024


_CRED_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
               "InvalidClientTokenId", "TokenRefreshRequired", "AuthorizationHeaderMalformed"}


_MISSING_KEY_CODES = {"NoSuchKey", "404", "NotFound"}


def error_message(code: str, status: int, op: str, uri: str, message: str,
                  attempts: int | None) -> str:
    """The one-line message for an S3 error response (pure; used by :func:`translate`)."""
    if code == "NoSuchBucket":
        return f"{uri}: the bucket does not exist (check the bucket name and the endpoint)"
    if code in _CRED_CODES:
        return (f"{uri}: S3 rejected the credentials ({code}); check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the role in use")
    if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled"):
        return (f"{uri}: access denied ({op}); the credentials in use lack permission for "
                "this bucket/prefix (S3 also answers 403 for a missing object when "
                "s3:ListBucket is not granted)")
    if code in ("SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                "503") or status >= 500:
        tries = f" after {attempts} attempts" if attempts else ""
        return (f"{uri}: S3 {op} kept failing{tries} ({code}: {message}); the store is "
                "unavailable or throttling; retry later or raise Global.s3_max_attempts")
    return f"{uri}: S3 {op} failed ({code}: {message})"


def backoff(attempt: int, base: float = 0.25, cap: float = 20.0) -> float:
    """Full-jitter exponential backoff before retry number ``attempt`` (0-based)."""
    return random.random() * min(cap, base * 2**attempt)


CREDENTIALS_DIR_ENV = "CLSACT_S3_CREDENTIALS_DIR"


_KEY_FILES = {"AWS_ACCESS_KEY_ID": "aws_access_key_id",
              "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
              "AWS_SESSION_TOKEN": "aws_session_token"}


def credentials_from_dir(path: str) -> dict[str, str]:
    """boto3 session keywords from the key files in ``path`` (a mounted Secret).

    Raises:
        StorageError: the folder or one of the two required files is missing or unreadable.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise StorageError(f"{CREDENTIALS_DIR_ENV}={path} is not a folder (the S3 Secret's "
                           "mount): check the pod's s3-credentials volume")
    out = {}
    for name, key in _KEY_FILES.items():
        file = folder / name
        try:
            value = file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            if name == "AWS_SESSION_TOKEN":
                continue
            raise StorageError(f"{CREDENTIALS_DIR_ENV}={path} has no {name}: the S3 Secret "
                               f"must hold the keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                               ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise StorageError(f"{file} cannot be read ({type(exc).__name__})") from None
        out[key] = value
    return out


def make_session():
    """The boto3 session whose credentials every client uses: the keys in
    ``CLSACT_S3_CREDENTIALS_DIR`` when set, else boto3's chain.

    Raises:
        StorageError: the AWS profile named by AWS_PROFILE does not exist, or the credentials
            folder named by CLSACT_S3_CREDENTIALS_DIR is incomplete.
    """
    import boto3
    from botocore.exceptions import ProfileNotFound

    folder = os.environ.get(CREDENTIALS_DIR_ENV)
    keys = credentials_from_dir(folder) if folder else {}
    try:
        return boto3.session.Session(**keys)
    except ProfileNotFound as exc:
        raise StorageError(f"{exc}; fix AWS_PROFILE") from None


def env_endpoint() -> str | None:
    """``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else None (AWS)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
