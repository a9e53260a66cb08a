"""A node's cache of model files from an object store, shared by every process on the node.

The layout is Hugging Face's hub cache: content under its ETag, and a view per set of files
that gives each file its own name beside the others (a backend may read siblings).

    blobs/<key>                 the content; key = sha256(etag, size); appears only complete (rename)
    views/<key>/<name>          a relative symlink to its blob, one folder per fetched set of files
    locks/<key>.fetch           held exclusive while one process downloads (the others wait, then hit)
    locks/<key>.use             held shared by every process that uses the blob, for its life;
                                eviction deletes only blobs whose lock it can take exclusive
    locks/evict                 exclusive while evicting, shared while making a view
    tmp/                        downloads in progress; a cut one is deleted, never renamed into place
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modelserve.modelstore import ModelStoreError, StoredFile
from modelserve.replica_spec import ReplicaArgs
from modelserve.s3 import s3_client, store_error

_CHUNK_BYTES = 1 << 20
#: How long one read of a download may wait for bytes before it is retried, then fails.
_READ_TIMEOUT_S = 30
#: This process's shared `use` locks, by lock file: held until the process ends (or `release_all`).
_HELD: dict[str, int] = {}
_HELD_LOCK = threading.Lock()


def fetch(store_uri: str, files: Sequence[StoredFile], cache_dir: Path | str, cap_bytes: int) -> list[Path]:
    """Local paths of `files` (as `Store.resolve` gave them), in order, downloading what the node lacks.

    A local-directory store needs no cache: its paths come back as they are. For `s3://`, a file
    already in `cache_dir` costs no request at all; N processes asking for the same file at once
    download it once. Before a download, least-recently-used blobs that no process uses are
    deleted until the cache plus the new file fits `cap_bytes`; blobs in use are never deleted,
    so the cache exceeds the cap only by what running processes hold. Each file's content must
    still have the ETag it was resolved with (GET If-Match), else ModelStoreError says to apply again.
    """
    if not store_uri.startswith("s3://"):
        return [Path(f.uri) for f in files]
    cache = Path(cache_dir)
    for sub in ("blobs", "views", "locks", "tmp"):
        (cache / sub).mkdir(parents=True, exist_ok=True)
    clients: list[Any] = []

    def client() -> Any:
        if not clients:
            clients.append(s3_client(read_timeout_s=_READ_TIMEOUT_S))
        return clients[0]

    blobs = [_hold(cache, f, cap_bytes, client) for f in files]
    view = _view(cache, files, blobs)
    return [view / f.name for f in files]


def release_all() -> None:
    """Drops this process's marks on the blobs it fetched (a process's end does the same)."""
    with _HELD_LOCK:
        while _HELD:
            os.close(_HELD.popitem()[1])


def _blob_key(file: StoredFile) -> str:
    return hashlib.sha256(f"{file.etag}\0{file.size}".encode()).hexdigest()[:32]


def _hold(cache: Path, file: StoredFile, cap_bytes: int, client: Callable[[], Any]) -> Path:
    key = _blob_key(file)
    blob = cache / "blobs" / key
    mark = cache / "locks" / f"{key}.use"
    with _HELD_LOCK:
        if str(mark) not in _HELD:
            use = os.open(mark, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(use, fcntl.LOCK_SH)
            _HELD[str(mark)] = use
    if blob.is_file():
        os.utime(blob)  # last used: the eviction order
        return blob
    with _locked(cache / "locks" / f"{key}.fetch", fcntl.LOCK_EX):
        if not blob.is_file():
            _evict(cache, cap_bytes - file.size)
            _download(client(), file, blob, cache / "tmp")
    return blob


def _download(client: Any, file: StoredFile, blob: Path, tmp_dir: Path) -> None:
    for stale in tmp_dir.glob(f"{blob.name}.*.part"):  # a killed process's; we hold the fetch lock
        stale.unlink(missing_ok=True)
    bucket, _, key = file.uri[len("s3://") :].partition("/")
    part = tmp_dir / f"{blob.name}.{os.getpid()}.part"
    try:
        body = client.get_object(Bucket=bucket, Key=key, IfMatch=f'"{file.etag}"')["Body"]
        with part.open("wb") as out:
            for chunk in body.iter_chunks(_CHUNK_BYTES):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if (got := part.stat().st_size) != file.size:
            raise ModelStoreError(f"{file.uri}: the download was cut ({got} of {file.size} bytes); try again")
        os.replace(part, blob)
    except Exception as exc:
        part.unlink(missing_ok=True)
        if isinstance(exc, ModelStoreError):
            raise
        raise store_error(file.uri, exc) from exc


def _view(cache: Path, files: Sequence[StoredFile], blobs: list[Path]) -> Path:
    listing = "\0".join(f"{f.name}\0{b.name}" for f, b in zip(files, blobs, strict=True))
    view = cache / "views" / hashlib.sha256(listing.encode()).hexdigest()[:32]
    with _locked(cache / "locks" / "evict", fcntl.LOCK_SH):
        if view.is_dir():
            return view
        staging = cache / "tmp" / f"view.{view.name}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        for file, blob in zip(files, blobs, strict=True):
            if file.name.startswith("/") or ".." in file.name.split("/"):
                raise ModelStoreError(f"{file.uri}: the name {file.name!r} leaves its folder; rename the object")
            link = staging / file.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, (view / file.name).parent))
        try:
            staging.rename(view)
        except OSError:  # another process made the same view first
            shutil.rmtree(staging, ignore_errors=True)
    return view


def _evict(cache: Path, budget_bytes: int) -> None:
    with _locked(cache / "locks" / "evict", fcntl.LOCK_EX):
        blobs = sorted(_stats(cache / "blobs"), key=lambda entry: entry[1].st_mtime_ns)
        total = sum(stat.st_size for _, stat in blobs)
        for blob, stat in blobs:
            if total <= budget_bytes:
                break
            if _delete_unused(cache, blob):
                total -= stat.st_size
        for view in (cache / "views").iterdir():
            if any(link.is_symlink() and not link.exists() for link in view.rglob("*")):
                shutil.rmtree(view, ignore_errors=True)


def _delete_unused(cache: Path, blob: Path) -> bool:
    use = os.open(cache / "locks" / f"{blob.name}.use", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(use, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(use)
        return False  # a process uses it
    try:
        blob.unlink(missing_ok=True)
        return True
    finally:
        os.close(use)


def _stats(folder: Path) -> Iterator[tuple[Path, os.stat_result]]:
    for path in folder.iterdir():
        try:
            yield path, path.stat()
        except FileNotFoundError:
            continue


@contextmanager
def _locked(path: Path, operation: int) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, operation)
        yield
    finally:
        os.close(fd)


#: A node's cache directory: this variable in the node's environment, else ~/.cache/modelserve/models.
CACHE_ENV = "MODELSERVE_MODEL_CACHE"


def cache_dir() -> Path:
    """Where this node caches model files from object stores (`MODELSERVE_MODEL_CACHE` to move it)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "modelserve" / "models")


def model_dir(args: ReplicaArgs) -> str:
    """The directory the backend reads its model files from: `model_zoo`, or where the zoo is an object
    store, this node's cached copy of the section's files (fetched once per node: modelcache.py)."""
    if not args.stored_files:
        return args.model_zoo
    files = [StoredFile(**f) for f in args.stored_files]
    paths = fetch(args.model_zoo, files, cache_dir(), int(args.model_cache_gb * 2**30))
    return str(paths[0])[: -len(files[0].name) - 1]  # the view holding every file under its name
