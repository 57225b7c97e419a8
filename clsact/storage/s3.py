"""S3-compatible object storage (AWS S3, MinIO, Ceph RGW, ...) as a Store, through boto3.

* Credentials: files in ``$CLSACT_S3_CREDENTIALS_DIR`` when set (``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, optionally ``AWS_SESSION_TOKEN``: a Kubernetes Secret mounted as
  a volume, which is how the pods get them: as env variables they would be printed by
  paddle.distributed.launch, which logs the whole environment of a failed worker), else
  boto3's standard chain (env keys, ``AWS_PROFILE``/config files, web identity, instance
  roles). Endpoint: ``--s3-endpoint`` / ``Global.s3_endpoint``, else
  ``AWS_ENDPOINT_URL(_S3)``, else AWS. Path-style addressing when a custom endpoint is set.
* Retries: botocore's "standard" mode (exponential backoff with jitter) retries 5xx,
  throttling, timeouts and dropped connections up to ``max_attempts``; a body that breaks
  off mid-read is retried the same way here. After the bound: one StorageError naming the
  object.
* Reads of many objects (:meth:`S3Store.iter_many`) run on a bounded thread pool, so the
  caller decodes earlier images while later ones download.
* Uploads go through s3transfer (multipart above ``multipart_threshold``); exclusive writes
  use a conditional put (``If-None-Match: *``).

The boto3 client is created lazily in each process (a Store is pickled into loader workers).
"""

from __future__ import annotations

import errno
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from clsact.errors import StorageError
from clsact.storage.base import AlreadyExists, Store, VersionConflict
from clsact.storage.s3session import (
    _MISSING_KEY_CODES,
    S3Settings,
    backoff,
    env_endpoint,
    error_message,
    make_session,
)
from clsact.storage.uri import S3Location

log = logging.getLogger(__name__)


def translate(exc: Exception, op: str, uri: str, conf: S3Settings) -> Exception:
    """The clsact exception for a botocore/boto3 exception (FileNotFoundError for a missing
    object, AlreadyExists for a failed conditional put, else StorageError)."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        code, status = str(err.get("Code", "")), int(meta.get("HTTPStatusCode", 0) or 0)
        if code in _MISSING_KEY_CODES and op != "head_bucket":
            return FileNotFoundError(errno.ENOENT, "no such object", uri)
        if code == "404" and op == "head_bucket":
            code = "NoSuchBucket"
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
            return AlreadyExists(f"{uri} already exists")
        attempts = meta.get("RetryAttempts")
        return StorageError(error_message(code, status, op, uri, str(err.get("Message", "")),
                                          attempts + 1 if attempts is not None else None))
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return StorageError(f"{uri}: no S3 credentials found; set AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with an IAM role")
    if isinstance(exc, bx.ProfileNotFound):
        return StorageError(f"{uri}: {exc}; fix AWS_PROFILE")
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
        where = conf.endpoint_url or env_endpoint() or "the default AWS endpoint"
        return StorageError(f"{uri}: cannot connect to {where} ({type(exc).__name__}); check "
                            "--s3-endpoint / AWS_ENDPOINT_URL and the network")
    if isinstance(exc, (bx.ConnectionClosedError, bx.ReadTimeoutError, bx.HTTPClientError)):
        return StorageError(f"{uri}: S3 {op} failed after {conf.max_attempts} attempts: "
                            f"{type(exc).__name__}: {exc}")
    if isinstance(exc, bx.ParamValidationError):
        return StorageError(f"{uri}: {exc}")
    if isinstance(exc, bx.BotoCoreError):
        return StorageError(f"{uri}: S3 {op} failed: {exc}")
    return exc


def _body_errors() -> tuple[type[BaseException], ...]:
    from botocore import exceptions as bx
    from urllib3 import exceptions as ux

    return (bx.ResponseStreamingError, bx.IncompleteReadError, bx.ReadTimeoutError,
            ux.ProtocolError, ux.ReadTimeoutError, ConnectionError)


# opt-out of the conditional-write probe (a store known to ignore the headers, risk accepted)
UNCONDITIONAL_ENV = "CLSACT_S3_UNCONDITIONAL"
_CONDITIONAL_OK: set[tuple[str | None, str]] = set()  # (endpoint, bucket) probed and fine


class S3Store(Store):
    """Objects under ``s3://bucket/prefix``."""

    def __init__(self, loc: S3Location, conf: S3Settings) -> None:
        self.loc = loc
        self.conf = conf

    def __repr__(self) -> str:
        return f"S3Store({self.loc.uri()!r})"

    # -- plumbing --------------------------------------------------------------------
    @property
    def client(self):
        """The boto3 S3 client of this process for these settings (created on first use)."""
        return _process_client(self.conf)

    def _key(self, rel: str) -> str:
        return self.loc.join(rel).key if rel else self.loc.key

    def _call(self, op: str, rel: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, op)(Bucket=self.loc.bucket, **kwargs)
        except Exception as exc:
            raise translate(exc, op, self.describe(rel), self.conf) from None

    def _get(self, rel: str, **kwargs: Any) -> bytes:
        body_errors = _body_errors()
        last: BaseException | None = None
        for attempt in range(self.conf.max_attempts):
            resp = self._call("get_object", rel, Key=self._key(rel), **kwargs)
            try:
                return resp["Body"].read()
            except body_errors as exc:  # the connection broke off mid-body
                last = exc
                log.debug("retrying %s after %s", self.describe(rel), exc)
                time.sleep(backoff(attempt))
        raise StorageError(f"{self.describe(rel)}: reading the object kept failing after "
                           f"{self.conf.max_attempts} attempts ({type(last).__name__}: {last})")

    # -- Store -----------------------------------------------------------------------
    def describe(self, rel: str = "") -> str:
        return self.loc.join(rel).uri() if rel else self.loc.uri()

    def child(self, rel: str) -> S3Store:
        return S3Store(self.loc.join(rel), self.conf)

    def read_bytes(self, rel: str) -> bytes:
        return self._get(rel)

    def read_range(self, rel: str, start: int, length: int) -> bytes:
        from clsact.storage import s3read

        if length <= 0:  # an empty member (HTTP has no empty range): nothing to read
            return b""
        if s3read.enabled():
            data = s3read.get(self.conf, self.loc.bucket, self._key(rel), self.describe(rel),
                              (start, start + length))
        else:
            data = self._get(rel, Range=f"bytes={start}-{start + length - 1}")
        if len(data) != length:
            raise OSError(f"{self.describe(rel)} is truncated (wanted bytes {start}-"
                          f"{start + length - 1}, got {len(data)})")
        return data

    def iter_many(self, rels: list[str]) -> Iterator[bytes | OSError]:
        """The objects' bytes in order (OSError for one that cannot be read), fetched on
        ``io_threads`` threads: through obstore when it is installed (:mod:`s3read`: a
        fraction of botocore's CPU per request), else boto3."""
        from clsact.storage import s3read

        pool = _process_pool(self.conf.io_threads)
        read = self._fast_read_or_oserror if s3read.enabled() else self._read_or_oserror
        futures = [pool.submit(read, rel) for rel in rels]
        try:
            for fut in futures:
                yield fut.result()
        finally:
            for fut in futures:
                fut.cancel()

    def _read_or_oserror(self, rel: str) -> bytes | OSError:
        try:
            return self.read_bytes(rel)
        except OSError as exc:
            return exc

    def _fast_read_or_oserror(self, rel: str) -> bytes | OSError:
        from clsact.storage import s3read

        try:
            return s3read.get(self.conf, self.loc.bucket, self._key(rel), self.describe(rel))
        except OSError as exc:
            return exc

    def exists(self, rel: str) -> bool:
        try:
            self._call("head_object", rel, Key=self._key(rel))
        except FileNotFoundError:
            return False
        return True

    def list(self, rel: str = "") -> list[tuple[str, int]]:
        prefix = self._key(rel)
        prefix = f"{prefix}/" if prefix else ""
        strip = f"{self.loc.key}/" if self.loc.key else ""
        out = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.loc.bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    out.append((obj["Key"][len(strip):], int(obj["Size"])))
        except Exception as exc:
            raise translate(exc, "list_objects_v2", self.describe(rel), self.conf) from None
        return sorted(out)

    def iter_chunks(self, rel: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        resp = self._call("get_object", rel, Key=self._key(rel))
        try:
            yield from resp["Body"].iter_chunks(chunk)
        except _body_errors() as exc:
            raise StorageError(f"{self.describe(rel)}: the download broke off ({exc})") from None

    def get_file(self, rel: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.loc.bucket, self._key(rel), str(dest),
                                      Config=self._transfer_config())
        except Exception as exc:
            raise _unwrap_transfer(exc, "download", self.describe(rel), self.conf) from None

    def put_file(self, src: Path, rel: str) -> None:
        try:
            self.client.upload_file(str(src), self.loc.bucket, self._key(rel),
                                    Config=self._transfer_config())
        except Exception as exc:
            raise _unwrap_transfer(exc, "upload", self.describe(rel), self.conf) from None

    def put_bytes(self, rel: str, data: bytes, *, exclusive: bool = False) -> None:
        extra = {"IfNoneMatch": "*"} if exclusive else {}
        self._call("put_object", rel, Key=self._key(rel), Body=data, **extra)

    def read_versioned(self, rel: str) -> tuple[bytes, str]:
        """The content and its ETag (one GET, so the two belong together)."""
        body_errors = _body_errors()
        for attempt in range(self.conf.max_attempts):
            resp = self._call("get_object", rel, Key=self._key(rel))
            try:
                return resp["Body"].read(), str(resp["ETag"])
            except body_errors:
                time.sleep(backoff(attempt))
        raise StorageError(f"{self.describe(rel)}: reading the object kept failing after "
                           f"{self.conf.max_attempts} attempts")

    def replace_if(self, rel: str, data: bytes, version: str | None) -> None:
        """A conditional PUT: ``If-Match: <ETag>``, or ``If-None-Match: *`` to create (S3 and
        MinIO evaluate it atomically; a store that ignores the header cannot give CAS, so
        it is refused first: :meth:`check_conditional_writes`)."""
        self.check_conditional_writes()
        cond = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            self._call("put_object", rel, Key=self._key(rel), Body=data, **cond)
        except (AlreadyExists, FileNotFoundError):  # 412/409, or deleted since (404)
            raise VersionConflict(f"{self.describe(rel)} changed since it was read") from None

    def delete(self, rel: str) -> None:
        self._call("delete_object", rel, Key=self._key(rel))

    def check_writable(self) -> None:
        # A probe write is the real test (HeadBucket needs s3:ListBucket on AWS but
        # s3:HeadBucket on moto; a put answers NoSuchBucket / AccessDenied everywhere).
        probe = f".clsact-write-check-{random.getrandbits(48):012x}"
        self._call("put_object", "", Key=self._key(probe), Body=b"")  # errors name the dir
        try:
            self.delete(probe)
        except StorageError as exc:  # write-once setups may not grant s3:DeleteObject
            log.warning("could not delete the write probe %s (%s); publishing needs no "
                        "delete, but --overwrite will fail", self.describe(probe), exc)
        self.check_conditional_writes()

    def check_conditional_writes(self) -> None:
        """Refuse a store that ignores conditional writes, once per endpoint and bucket: the
        save dir's claim (``If-None-Match: *``) and the gate's ``latest`` pointer
        (``If-Match``) rely on them, and such a store (older MinIO and Ceph RGW releases,
        some gateways) silently turns both into plain overwrites. A probe object is written,
        then written again with each condition that must fail.

        Raises:
            StorageError: a condition was ignored (unless ``CLSACT_S3_UNCONDITIONAL=1``
                accepts the risk), or the probe could not be written.
        """
        key = (self.conf.endpoint_url or env_endpoint(), self.loc.bucket)
        if key in _CONDITIONAL_OK or os.environ.get(UNCONDITIONAL_ENV, "") == "1":
            return
        probe = f".clsact-conditional-check-{random.getrandbits(48):012x}"
        self._call("put_object", "", Key=self._key(probe), Body=b"probe")
        ignored = []
        try:
            for header, cond in (("If-None-Match: *", {"IfNoneMatch": "*"}),
                                 ("If-Match", {"IfMatch": '"00000000000000000000000000000000"'})):
                try:
                    self._call("put_object", "", Key=self._key(probe), Body=b"x", **cond)
                    ignored.append(header)
                except (AlreadyExists, FileNotFoundError):
                    pass  # refused, as it must be
        finally:
            try:
                self.delete(probe)
            except StorageError as exc:
                log.warning("could not delete the probe %s (%s)", self.describe(probe), exc)
        if ignored:
            raise StorageError(
                f"{self.describe()}: this S3 store ignores conditional writes "
                f"({' and '.join(ignored)} were not refused), so a save dir's claim and the "
                "gate's latest pointer would be plain overwrites; use a store that honours "
                f"them (AWS S3, current MinIO or Ceph RGW), or set {UNCONDITIONAL_ENV}=1 to "
                "accept racing runs overwriting each other")
        _CONDITIONAL_OK.add(key)

    def _transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=self.conf.multipart_threshold,
                              multipart_chunksize=self.conf.multipart_chunksize,
                              max_concurrency=min(self.conf.io_threads, 10), use_threads=True)


def _unwrap_transfer(exc: Exception, op: str, uri: str, conf: S3Settings) -> Exception:
    """s3transfer wraps ClientErrors (S3UploadFailedError, ...): dig the cause out."""
    from botocore.exceptions import ClientError

    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ClientError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ClientError):
        return translate(cause, op, uri, conf)
    translated = translate(exc, op, uri, conf)
    if translated is exc:
        return StorageError(f"{uri}: {op} failed: {exc}")
    return translated


# A Store is unpickled afresh for every loader task: clients (slow to build: they load the
# service model) and fetch threads are kept per process instead.
_CLIENTS: dict[tuple[S3Settings, str | None], Any] = {}
_POOLS: dict[int, ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def _process_client(conf: S3Settings):
    key = (conf, env_endpoint())  # the environment's endpoint applies when conf names none
    with _LOCK:
        if key not in _CLIENTS:
            _CLIENTS[key] = make_client(conf)
        return _CLIENTS[key]


def _process_pool(threads: int) -> ThreadPoolExecutor:
    with _LOCK:
        if threads not in _POOLS:
            _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="clsact-s3")
        return _POOLS[threads]


def make_client(conf: S3Settings):
    """A boto3 S3 client with clsact's retry, timeout and addressing settings.

    Raises:
        StorageError: see :func:`make_session`.
    """
    from botocore.config import Config

    session = make_session()
    custom = conf.endpoint_url is not None or env_endpoint() is not None
    config = Config(
        retries={"mode": "standard", "total_max_attempts": conf.max_attempts},
        connect_timeout=conf.connect_timeout, read_timeout=conf.read_timeout,
        max_pool_connections=conf.io_threads + 4,
        s3={"addressing_style": "path"} if custom else None,
        region_name=session.region_name or "us-east-1",
    )
    return session.client("s3", endpoint_url=conf.endpoint_url, config=config)


