"""The hot read path of object storage (one image per object, ranged reads of shards)
through obstore, the Python binding of Rust's ``object_store``.

botocore spends about a millisecond and a half of Python CPU on every request (building,
signing and parsing it); obstore does that work in Rust, without the GIL. ``make bench``
measures both clients on the same objects (client CPU per object); this module is used for
``S3Store.iter_many`` and ``read_range`` when obstore is installed (a dependency of clsact,
in the images too) and ``CLSACT_S3_READER`` is not ``boto3``. Everything else (listing, uploads,
conditional writes, publishing) stays on boto3.

It keeps boto3's behaviour:

* credentials: the same boto3 session (``CLSACT_S3_CREDENTIALS_DIR`` keys, else boto3's
  chain: env keys, ``AWS_PROFILE``, web identity, instance roles), asked again before they
  expire (obstore's ``Boto3CredentialProvider``);
* endpoint and addressing: ``--s3-endpoint`` / ``AWS_ENDPOINT_URL(_S3)``, path-style for a
  custom endpoint, plain HTTP allowed only when the endpoint says ``http://``;
* retries: 5xx, throttling, timeouts and dropped connections, ``max_attempts`` in all, with
  jittered exponential backoff (250 ms doubling up to 20 s); a body that breaks off is
  retried here like in :mod:`clsact.storage.s3`;
* errors: the same one-line messages (:func:`clsact.storage.s3session.error_message`).
"""

from __future__ import annotations

import errno
import os
import re
import threading
import time
from datetime import timedelta
from typing import Any

from clsact.errors import StorageError
from clsact.storage.s3session import S3Settings, backoff, env_endpoint, error_message, make_session

READER_ENV = "CLSACT_S3_READER"
_STORES: dict[tuple[S3Settings, str | None, str], Any] = {}
_LOCK = threading.Lock()


def enabled() -> bool:
    """Whether reads go through obstore: installed, and not switched off with
    ``CLSACT_S3_READER=boto3``.

    Raises:
        StorageError: ``CLSACT_S3_READER`` names neither client.
    """
    choice = os.environ.get(READER_ENV, "auto").strip().lower()
    if choice not in ("auto", "obstore", "boto3"):
        raise StorageError(f"{READER_ENV}={choice!r}: use obstore, boto3 or auto")
    if choice == "boto3":
        return False
    try:
        import obstore  # noqa: F401
    except ImportError:
        if choice == "obstore":
            raise StorageError(f"{READER_ENV}=obstore but obstore is not installed: pip "
                               "install obstore (a dependency of clsact: reinstall clsact)"
                               ) from None
        return False
    return True


def _store(conf: S3Settings, bucket: str):
    """This process's obstore S3Store for ``bucket`` (built once)."""
    with _LOCK:
        key = (conf, env_endpoint(), bucket)
        if key not in _STORES:
            _STORES[key] = _make_store(conf, bucket)
        return _STORES[key]


def _make_store(conf: S3Settings, bucket: str):
    from obstore.auth.boto3 import Boto3CredentialProvider
    from obstore.store import S3Store as ObStore

    session = make_session()
    endpoint = conf.endpoint_url or env_endpoint()
    options: dict[str, Any] = {
        "connect_timeout": f"{conf.connect_timeout}s", "timeout": f"{conf.read_timeout}s",
        "pool_max_idle_per_host": str(conf.io_threads + 4)}
    extra: dict[str, Any] = {"region": session.region_name or "us-east-1"}
    if endpoint:
        extra.update(endpoint=endpoint, virtual_hosted_style_request=False)
        if endpoint.startswith("http://"):
            options["allow_http"] = True
    retry = {"max_retries": max(0, conf.max_attempts - 1),
             "backoff": {"init_backoff": timedelta(milliseconds=250),
                         "max_backoff": timedelta(seconds=20), "base": 2.0},
             "retry_timeout": timedelta(minutes=3)}
    return ObStore(bucket, client_options=options, retry_config=retry,
                   credential_provider=Boto3CredentialProvider(session), **extra)


def _field(text: str, tag: str) -> str:
    """``<tag>value</tag>`` of the S3 error body obstore quotes, or ''."""
    m = re.search(f"<{tag}>([^<]*)</{tag}>", text)
    return m.group(1) if m else ""


def _summary(text: str) -> str:
    """obstore's one-line reason (its message before the debug dump, without the request
    line and timings): e.g. ``HTTP error: error sending request``."""
    head = text.split("Debug source:")[0].strip().splitlines()[0] if text.strip() else ""
    return head.rsplit(" - ", 1)[-1].split(": <?xml")[0].strip()[:300] or "unknown error"


def translate(exc: BaseException, uri: str, conf: S3Settings) -> Exception:
    """The clsact exception for an obstore error: FileNotFoundError for a missing object,
    else StorageError with the one-line message boto3's path gives
    (:func:`clsact.storage.s3session.error_message`)."""
    from obstore import exceptions as ox

    text = str(exc)
    code, message = _field(text, "Code"), _field(text, "Message")
    m = re.search(r"status code: (\d{3})", text)
    status = int(m.group(1)) if m else 0
    if code == "NoSuchBucket":
        return StorageError(error_message(code, status, "get_object", uri, message, None))
    if isinstance(exc, (FileNotFoundError, ox.NotFoundError)) or code == "NoSuchKey":
        return FileNotFoundError(errno.ENOENT, "no such object", uri)
    if code or status:
        return StorageError(error_message(code or str(status), status, "get_object", uri,
                                          message or _summary(text),
                                          conf.max_attempts if status >= 500 else None))
    if isinstance(exc, ox.UnauthenticatedError):
        return StorageError(error_message("InvalidAccessKeyId", 403, "get_object", uri, "",
                                          None))
    if isinstance(exc, ox.PermissionDeniedError):
        return StorageError(error_message("AccessDenied", 403, "get_object", uri, "", None))
    if "Connection refused" in text or "dns error" in text:
        where = conf.endpoint_url or env_endpoint() or "the default AWS endpoint"
        return StorageError(f"{uri}: cannot connect to {where} ({_summary(text)}); check "
                            "--s3-endpoint / AWS_ENDPOINT_URL and the network")
    return StorageError(f"{uri}: S3 get_object failed after {conf.max_attempts} attempts: "
                        f"{_summary(text)}")


def get(conf: S3Settings, bucket: str, key: str, uri: str,
        byte_range: tuple[int, int] | None = None) -> bytes:
    """The object's bytes (``byte_range``: [start, end) of them).

    Raises:
        FileNotFoundError: no such object.
        StorageError: any other failure, after the retries.
    """
    import obstore
    from obstore import exceptions as ox

    store = _store(conf, bucket)
    last = ""
    for attempt in range(conf.max_attempts):
        try:
            if byte_range is None:
                return bytes(obstore.get(store, key).bytes())
            return bytes(obstore.get_range(store, key, start=byte_range[0], end=byte_range[1]))
        except (ox.BaseError, OSError) as exc:
            last = _summary(str(exc))
            # obstore retries requests; a body that breaks off after the headers is retried
            # here, as clsact.storage.s3 does for boto3
            if "body error" not in str(exc):
                raise translate(exc, uri, conf) from None
            time.sleep(backoff(attempt))
    raise StorageError(f"{uri}: reading the object kept failing after {conf.max_attempts} "
                       f"attempts ({last})")
