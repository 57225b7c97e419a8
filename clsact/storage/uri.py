"""Parse and check storage locations: local paths and ``s3://bucket/prefix`` URIs (pure)."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from clsact.errors import StorageError

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# S3 bucket naming rules (3-63 chars, lowercase letters, digits, dots, hyphens; starts and
# ends with a letter or digit; not an IP address).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
SCHEMES = ("s3",)


@dataclass(frozen=True)
class S3Location:
    """``s3://bucket/key``; ``key`` has no leading or trailing slash (may be empty)."""

    bucket: str
    key: str

    def uri(self) -> str:
        """The ``s3://`` form."""
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"

    def join(self, *parts: str) -> S3Location:
        """The location of ``parts`` (relative, ``/``-separated) under this one.

        Raises:
            StorageError: a part is absolute or has a ``..`` segment (S3-compatible servers
                and proxies may normalise it to a key outside this prefix).
        """
        for part in parts:
            if part.startswith("/") or ".." in part.split("/"):
                raise StorageError(f"{part!r} is outside {self.uri()}: paths in a store must "
                                   "stay inside it")
        key = posixpath.join(self.key, *parts) if self.key else posixpath.join(*parts)
        return S3Location(self.bucket, key.strip("/"))


def is_uri(location: str) -> bool:
    """True for ``scheme://...`` locations, False for local paths."""
    return bool(_URI.match(location))


def parse_s3(location: str, what: str) -> S3Location:
    """Split ``s3://bucket/prefix`` after checking it.

    Raises:
        StorageError: another scheme, no or invalid bucket name, or an empty/``..`` segment.
    """
    scheme, _, rest = location.partition("://")
    if scheme.lower() not in SCHEMES:
        raise StorageError(f"{what} {location}: unsupported scheme {scheme}://; use a local "
                           "path or s3://bucket/prefix")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{what} {location}: no bucket name; write s3://bucket/prefix")
    if not _BUCKET.match(bucket) or ".." in bucket or _IP.match(bucket):
        raise StorageError(f"{what} {location}: {bucket!r} is not a valid S3 bucket name "
                           "(3-63 lowercase letters, digits, dots or hyphens)")
    key = key.strip("/")
    if key and any(part in ("", ".", "..") for part in key.split("/")):
        raise StorageError(f"{what} {location}: the key has an empty, '.' or '..' segment")
    return S3Location(bucket, key)


def check_location(location: str, what: str) -> None:
    """Reject malformed locations early (typos like ``s3:/bucket`` or ``s3:bucket`` too).

    Raises:
        StorageError: the location is empty, a malformed URI, or an unsupported scheme.
    """
    if not location:
        raise StorageError(f"{what} is empty; give a local path or s3://bucket/prefix")
    if is_uri(location):
        parse_s3(location, what)
    elif re.match(r"^s3:(?!//)", location, re.IGNORECASE):
        raise StorageError(f"{what} {location}: malformed URI; write s3://bucket/prefix")
