"""Atomic publishing of a run's outputs, and verifying a published run.

Protocol (the same on local disk and S3):

1. before any work: :func:`claim` checks the destination is writable, refuses one holding
   ``_SUCCESS`` unless ``overwrite``, and claims it for this run: ``_CLAIM`` (the run id) is
   written with an exclusive write (S3: conditional put, ``If-None-Match: *``). A claim by
   the same run id is continued (a resumed or restarted run); another run's claim is refused
   unless ``overwrite``, which takes the destination over explicitly. So a second run never
   starts work in a save dir that another run owns;
2. :func:`publish` checks the claim is still this run's, uploads every staged file, then
   ``manifest.json`` (each file's size and sha256, the run id), checks the claim again, then
   writes ``_SUCCESS`` exclusively. A run interrupted at any point leaves no ``_SUCCESS``; a
   run that lost its claim (taken over with ``--overwrite``) uploads nothing more;
3. :func:`verify` checks a published run against its manifest.

Files added to a finished run later (the gate's ``blessing.json``) go with an *addendum*,
``manifest.<name>.json``: the added files' sizes and sha256 and the sha256 of the
``manifest.json`` they extend. :func:`add_to_run` writes the files, then the addendum;
:func:`verify` checks every addendum it finds as strictly as the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from clsact.errors import StorageError
from clsact.storage.base import AlreadyExists, Store

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
SUCCESS = "_SUCCESS"
CLAIM = "_CLAIM"
FORMAT = "clsact-run/1"
# locations this process published a run to (so an interrupt after publishing says so)
_PUBLISHED: list[str] = []


def published() -> list[str]:
    """The locations this process has published runs to."""
    return list(_PUBLISHED)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a local file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def staged_files(staging: Path) -> list[str]:
    """Relative POSIX paths of the files under ``staging``, sorted."""
    return sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())


def build_manifest(staging: Path, run_id: str) -> dict:
    """The manifest of the files under ``staging``."""
    files = [{"path": rel, "size": (staging / rel).stat().st_size,
              "sha256": sha256_file(staging / rel)} for rel in staged_files(staging)]
    return {"format": FORMAT, "run_id": run_id,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": files}


def check_unfinished(dest: Store, overwrite: bool) -> None:
    """Refuse a destination that holds a finished run (unless ``overwrite``); check access.

    Raises:
        StorageError: ``_SUCCESS`` exists and not ``overwrite``; or the destination cannot be
            written (missing bucket, no permission, bad credentials, unreachable endpoint).
    """
    dest.check_writable()
    if dest.exists(SUCCESS) and not overwrite:
        raise StorageError(f"{dest.describe()} already holds a finished run ({SUCCESS}); "
                           "choose another --save-dir or pass --overwrite")


def claim(dest: Store, run_id: str, overwrite: bool) -> str:
    """Claim ``dest`` for run ``run_id`` before any work (see the module docstring).

    Returns ``"new"`` (claimed now), ``"same run"`` (this run id's claim: resume) or
    ``"taken over"`` (another run's claim replaced, with ``overwrite``).

    Raises:
        StorageError: ``dest`` cannot be written, holds a finished run (without
            ``overwrite``), or is claimed by another run (without ``overwrite``).
    """
    check_unfinished(dest, overwrite)
    body = {"run_id": run_id, "claimed_at": datetime.now(timezone.utc).isoformat(
        timespec="seconds")}
    data = (json.dumps(body) + "\n").encode()
    try:
        dest.put_bytes(CLAIM, data, exclusive=True)
        return "new"
    except AlreadyExists:
        pass
    theirs = _read_json(dest, CLAIM) or {}
    owner = theirs.get("run_id")
    if owner == run_id:
        return "same run"
    if not overwrite:
        state = "finished" if dest.exists(SUCCESS) else "unfinished"
        raise StorageError(
            f"{dest.describe()} belongs to run {owner or 'unknown'} ({state}, claimed "
            f"{theirs.get('claimed_at', '?')}): resume it with --run-id {owner}, take it over "
            "with --overwrite, or choose another --save-dir")
    log.warning("--overwrite: %s belonged to run %s; run %s takes it over", dest.describe(),
                owner, run_id)
    dest.put_bytes(CLAIM, data)
    return "taken over"


def release_claim(dest: Store, run_id: str) -> None:
    """Remove ``dest``'s claim if it is run ``run_id``'s (best effort: a run that failed
    before it left anything to resume gives the save dir back)."""
    try:
        if (_read_json(dest, CLAIM) or {}).get("run_id") == run_id:
            dest.delete(CLAIM)
    except StorageError as exc:
        log.warning("could not remove the claim %s: %s", dest.describe(CLAIM), exc)


def check_claim(dest: Store, run_id: str) -> None:
    """Raise StorageError unless ``dest``'s claim (if any) is run ``run_id``'s."""
    owner = (_read_json(dest, CLAIM) or {}).get("run_id")
    if owner not in (None, run_id):
        raise StorageError(f"run {owner} took {dest.describe()} over (--overwrite) while run "
                           f"{run_id} was running; run {run_id} did not publish: choose "
                           "another --save-dir for it")


def _read_json(store: Store, rel: str) -> dict | None:
    """``rel`` as a JSON object; None when missing, unreadable or not an object."""
    try:
        data = json.loads(store.read_bytes(rel))
    except (ValueError, OSError):  # missing (FileNotFoundError) or unreadable
        return None
    return data if isinstance(data, dict) else None


def _entries(doc: object) -> list[dict]:
    """The ``files`` entries of a manifest or addendum document that are objects ([] for a
    document of another shape)."""
    files = doc.get("files") if isinstance(doc, dict) else None
    return [f for f in files if isinstance(f, dict)] if isinstance(files, list) else []


def addenda(store: Store) -> list[str]:
    """The addendum manifests (``manifest.<name>.json``) at the top of ``store``."""
    return sorted(rel for rel, _size in store.list()
                  if rel.startswith("manifest.") and rel.endswith(".json") and "/" not in rel
                  and rel != MANIFEST)


def previous_files(dest: Store) -> list[str]:
    """Every file of the finished run in ``dest`` that a replacing run must remove: what
    ``manifest.json`` and each addendum list, and the addenda themselves (so an old
    ``blessing.json`` cannot pass for the new run's verdict)."""
    out = [f.get("path") for f in _entries(_read_json(dest, MANIFEST))]
    for rel in addenda(dest):
        out += [f.get("path") for f in _entries(_read_json(dest, rel))]
        out.append(rel)
    return sorted({rel for rel in out if isinstance(rel, str) and rel})


def publish(staging: Path, dest: Store, run_id: str, *, overwrite: bool = False) -> dict:
    """Publish the files under ``staging`` to ``dest``; returns the manifest.

    With ``overwrite``, a previous run's ``_SUCCESS`` is removed first (so readers never see
    a marker over mixed files) and its files that this run does not replace are deleted.

    Raises:
        StorageError: an upload failed (no ``_SUCCESS`` is written), another run claimed
            ``dest`` (nothing more is uploaded), or another run finished into ``dest`` first.
    """
    check_claim(dest, run_id)
    old_files: list[str] = []
    if dest.exists(SUCCESS):
        if not overwrite:
            raise StorageError(f"{dest.describe()} already holds a finished run ({SUCCESS}); "
                               "choose another --save-dir or pass --overwrite")
        old_files = previous_files(dest)
        log.warning("--overwrite: replacing the finished run in %s (%d files of it, its "
                    "addenda included)", dest.describe(), len(old_files))
        dest.delete(SUCCESS)
    manifest = build_manifest(staging, run_id)
    for entry in manifest["files"]:
        dest.put_file(staging / entry["path"], entry["path"])
    new = {f["path"] for f in manifest["files"]}
    for rel in old_files:
        if rel not in new and rel not in (MANIFEST, SUCCESS, CLAIM):
            dest.delete(rel)
    body = (json.dumps(manifest, indent=2) + "\n").encode()
    check_claim(dest, run_id)
    dest.put_bytes(MANIFEST, body)
    marker = {"run_id": run_id, "manifest_sha256": hashlib.sha256(body).hexdigest(),
              "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        dest.put_bytes(SUCCESS, (json.dumps(marker) + "\n").encode(), exclusive=True)
    except AlreadyExists:
        theirs = _read_json(dest, SUCCESS) or {}
        if theirs.get("run_id") != run_id:  # not our own earlier (retried) write
            raise StorageError(
                f"another run ({theirs.get('run_id', 'unknown')}) finished into "
                f"{dest.describe()} while this one was publishing; this run's files may have "
                "replaced some of its files: publish runs to distinct --save-dir") from None
    _PUBLISHED.append(dest.describe())
    log.info("published %d files to %s (run %s)", len(manifest["files"]), dest.describe(),
             run_id)
    return manifest


def addendum_name(name: str) -> str:
    """The addendum manifest of the files added under ``name`` (``manifest.<name>.json``)."""
    return f"manifest.{name}.json"


def add_to_run(store: Store, name: str, files: dict[str, bytes]) -> None:
    """Add ``files`` (relative path -> content) to the finished run in ``store``, replacing
    earlier ones of the same addendum, and write ``manifest.<name>.json`` last.

    Raises:
        StorageError: the run is not finished (no ``_SUCCESS``), a path would replace a file
            of the run's manifest, or a write failed.
    """
    if not store.exists(SUCCESS):
        raise StorageError(f"{store.describe()} holds no finished run ({SUCCESS}): nothing "
                           "can be added to it")
    body = store.read_bytes(MANIFEST)
    try:
        owned = {f.get("path") for f in _entries(json.loads(body))}
    except ValueError:
        raise StorageError(f"{store.describe(MANIFEST)} is not JSON: the run is damaged; "
                           "run clsact verify on it") from None
    clash = sorted(set(files) & (owned | {MANIFEST, SUCCESS, CLAIM}))
    if clash:
        raise StorageError(f"{store.describe(clash[0])} belongs to the run itself; it cannot "
                           "be replaced by an addition")
    entries = []
    for rel, data in sorted(files.items()):
        store.put_bytes(rel, data)
        entries.append({"path": rel, "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest()})
    addendum = {"format": "clsact-addendum/1", "extends": MANIFEST,
                "manifest_sha256": hashlib.sha256(body).hexdigest(), "files": entries,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    store.put_bytes(addendum_name(name), (json.dumps(addendum, indent=2) + "\n").encode())


@dataclass
class Verification:
    """What :func:`verify` found."""

    location: str
    run_id: str | None = None
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    addenda: list[str] = field(default_factory=list)  # manifest.<name>.json checked too

    def manifests(self) -> str:
        """``manifest.json`` and the addenda checked, for messages."""
        return " and ".join([MANIFEST, *self.addenda])

    @property
    def ok(self) -> bool:
        """True when the run is complete and every file matches the manifest."""
        return not self.problems


def verify(store: Store) -> Verification:
    """Check a published run: ``_SUCCESS`` present and naming this manifest, every file
    present with the manifest's size and sha256.

    Raises:
        StorageError: the location cannot be read (credentials, bucket, network).
    """
    out = Verification(store.describe())
    marker = _read_json(store, SUCCESS)
    if marker is None:
        out.problems.append(f"no readable {SUCCESS}: the run did not finish (or is not a "
                            "clsact run)")
    try:
        body = store.read_bytes(MANIFEST)
        manifest = json.loads(body)
    except (FileNotFoundError, ValueError):
        out.problems.append(f"no readable {MANIFEST}")
        return out
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        out.problems.append(f"{MANIFEST} is not a clsact manifest (a JSON object with a "
                            "files list)")
        return out
    run_id = manifest.get("run_id")
    out.run_id = run_id if isinstance(run_id, str) else None
    if marker is not None:
        if marker.get("manifest_sha256") != hashlib.sha256(body).hexdigest():
            out.problems.append(f"{MANIFEST} differs from the one {SUCCESS} was written for")
        if marker.get("run_id") != out.run_id:
            out.problems.append(f"{SUCCESS} names run {marker.get('run_id')} but {MANIFEST} "
                                f"run {out.run_id}")
    for entry in manifest["files"]:
        _verify_file(store, entry, out)
    _verify_addenda(store, body, out)
    return out


def _verify_addenda(store: Store, manifest_body: bytes, out: Verification) -> None:
    digest = hashlib.sha256(manifest_body).hexdigest()
    for rel in addenda(store):
        out.addenda.append(rel)
        try:
            addendum = json.loads(store.read_bytes(rel))
        except (FileNotFoundError, ValueError):
            out.problems.append(f"{rel}: unreadable")
            continue
        if not isinstance(addendum, dict) or not isinstance(addendum.get("files"), list):
            out.problems.append(f"{rel} is not a clsact addendum (a JSON object with a files "
                                "list)")
            continue
        if addendum.get("manifest_sha256") != digest:
            out.problems.append(f"{rel} extends another {MANIFEST} than this run's")
        for entry in addendum["files"]:
            _verify_file(store, entry, out)


def _verify_file(store: Store, entry: object, out: Verification) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        out.problems.append(f"a manifest entry is not an object with a path: {entry!r:.80}")
        return
    rel = entry["path"]
    digest, size = hashlib.sha256(), 0
    try:
        for chunk in store.iter_chunks(rel):
            digest.update(chunk)
            size += len(chunk)
    except FileNotFoundError:
        out.problems.append(f"{rel}: missing")
        return
    out.files += 1
    out.bytes += size
    if size != entry.get("size"):
        out.problems.append(f"{rel}: size {size} != manifest {entry.get('size')}")
    elif digest.hexdigest() != entry.get("sha256"):
        out.problems.append(f"{rel}: sha256 differs from the manifest")
