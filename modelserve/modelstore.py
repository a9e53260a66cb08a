"""Where model files live: a local directory or `s3://bucket/prefix`, refs by name and version.

`model = w.npz` names one file; `model = digits@3` names every file under `<zoo>/digits/3/` (Triton's
layout); `digits@latest` is the highest numbered version, pinned when resolved. No Ray here: the
controller resolves refs, a replica's node fetches what was resolved (`modelserve.modelcache`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelserve.errors import ModelStoreError
from modelserve.s3 import LIST_TIMEOUT_S, code_of, s3_client, store_error

__all__ = ["ModelStoreError", "open_store", "parse_ref", "s3_client", "store_error"]

ACCEPTED_FORMS = "a file name ('w.npz'), a numbered version ('digits@3') or the highest one ('digits@latest')"
_VERSION = re.compile(r"0|[1-9][0-9]*")


@dataclass(frozen=True)
class ModelRef:
    """A parsed `model` entry: `version` is a number, or None with `latest`, or None for a plain file."""

    name: str
    version: int | None = None
    latest: bool = False

    @property
    def versioned(self) -> bool:
        return self.latest or self.version is not None

    @property
    def text(self) -> str:
        if self.latest:
            return f"{self.name}@latest"
        return self.name if self.version is None else f"{self.name}@{self.version}"


@dataclass(frozen=True)
class StoredFile:
    """One model file: where it is, its name for the backend, and what identifies its content.

    `etag` is the S3 ETag (quotes removed) or, for a local file, `sha256:<hex>` of its content.
    """

    uri: str
    name: str
    etag: str
    size: int


@dataclass(frozen=True)
class Resolved:
    """A ref with `@latest` pinned to a number, and its files in name order."""

    ref: ModelRef
    files: tuple[StoredFile, ...]

    @property
    def pinned(self) -> str:
        return self.ref.text

    @property
    def digest(self) -> str:
        """Changes when a file is added, removed, renamed or has new content (a new ETag): what rolls a section."""
        listing = "\0".join(f"{f.name}\0{f.etag}" for f in self.files)
        return hashlib.sha256(listing.encode()).hexdigest()[:16]


def parse_ref(text: str) -> ModelRef:
    """`digits@3`, `digits@latest` or a plain file name (which may contain `/`) -> ModelRef.

    Raises ValueError naming the accepted forms, e.g. for `digits@`, `digits@x1` or `@3`.
    """
    name, at, version = text.partition("@") if "@" in text else (text, "", "")
    if at and "@" in version:
        raise ValueError(f"{text!r} has more than one '@'; use {ACCEPTED_FORMS}")
    if not name or name != name.strip() or name.startswith("/") or ".." in name.split("/"):
        raise ValueError(f"{text!r} is not a model name relative to model_zoo; use {ACCEPTED_FORMS}")
    if not at:
        return ModelRef(name)
    if version == "latest":
        return ModelRef(name, latest=True)
    if not _VERSION.fullmatch(version):
        raise ValueError(
            f"{text!r}: the version must be a number without leading zeros or 'latest'; use {ACCEPTED_FORMS}"
        )
    return ModelRef(name, int(version))


def open_store(model_zoo: str) -> Store:
    """The store at `model_zoo`: `s3://bucket/prefix` or a local directory.

    S3 credentials and endpoint come from the standard AWS variables and files (`AWS_ENDPOINT_URL`,
    `AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, ...), never from conf.ini.
    """
    if model_zoo.startswith("s3://"):
        bucket, _, prefix = model_zoo[len("s3://") :].partition("/")
        if not bucket:
            raise ModelStoreError(f"{model_zoo}: no bucket name; write s3://bucket/prefix")
        return S3Store(bucket, prefix.strip("/"))
    return LocalStore(Path(model_zoo))


class Store:
    """What both stores do: list versions, list a ref's files, pin `@latest`."""

    uri: str

    def versions(self, name: str) -> list[int]:
        raise NotImplementedError

    def _file(self, name: str) -> StoredFile:
        raise NotImplementedError

    def files(self, ref: ModelRef) -> tuple[StoredFile, ...]:
        """A plain name is one file; `name@N` is every file under `<zoo>/name/N/`, in name order."""
        return self.resolve(ref).files

    def resolve(self, ref: ModelRef) -> Resolved:
        """Pins `@latest` to the highest version; raises ModelStoreError if a file or version is missing."""
        if not ref.versioned:
            return Resolved(ref, (self._file(ref.name),))
        if ref.latest:
            versions = self.versions(ref.name)
            if not versions:
                raise ModelStoreError(f"{self._uri(ref.name)}/: no numbered versions (e.g. {ref.name}/1/)")
            ref = ModelRef(ref.name, versions[-1])
        assert ref.version is not None
        files = self._version_files(ref.name, ref.version)
        if files:
            return Resolved(ref, files)
        versions = self.versions(ref.name)
        if ref.version in versions:
            raise ModelStoreError(f"{self._uri(ref.name, str(ref.version))}/: version {ref.version} holds no files")
        there = ", ".join(map(str, versions)) if versions else "none"
        raise ModelStoreError(
            f"{self._uri(ref.name, str(ref.version))}/: no such version; the versions there are: {there}"
        )

    def entries(self) -> list[str]:
        """The models of a multiplexed section's `models` store: the names at its top, in order."""
        raise NotImplementedError

    def entry(self, name: str) -> tuple[StoredFile, ...]:
        """One of them: the file `<store>/name`, or every file under `<store>/name/` (names relative to it)."""
        try:
            return (self._file(name),)
        except ModelStoreError:
            files = self._folder_files(name)
            if not files:
                raise ModelStoreError(f"{self._uri(name)}: no such model (a file or a folder of files)") from None
            return files

    def _folder_files(self, name: str) -> tuple[StoredFile, ...]:
        raise NotImplementedError

    def _version_files(self, name: str, version: int) -> tuple[StoredFile, ...]:
        return self._folder_files(f"{name}/{version}")

    def _uri(self, *parts: str) -> str:
        return "/".join([self.uri.rstrip("/"), *parts])


class LocalStore(Store):
    """A directory on every node (today's `model_zoo`). A file's `etag` is its mtime and size: resolving
    reads no content, so `check`, `status` and `try` stay quick with large models. What rolls a section
    is still the content (`models.SectionModels.digest` reads it once per apply, as before)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = str(root)

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        try:
            if not folder.is_dir():
                return []
        except OSError:
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and _VERSION.fullmatch(p.name))

    def _file(self, name: str) -> StoredFile:
        path = self.root / name
        try:
            found = path.is_file()
        except OSError as exc:  # a name too long for the file system
            raise ModelStoreError(f"{path}: cannot be read ({exc.strerror})") from None
        if not found:
            raise ModelStoreError(f"{path}: no such file")
        return _local_file(path, name)

    def entries(self) -> list[str]:
        try:
            return sorted(p.name for p in self.root.iterdir() if not p.name.startswith("."))
        except OSError as exc:
            raise ModelStoreError(f"{self.root}: cannot be listed ({exc.strerror})") from None

    def _folder_files(self, name: str) -> tuple[StoredFile, ...]:
        folder = self.root / name
        paths = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix())
        return tuple(_local_file(p, p.relative_to(folder).as_posix()) for p in paths)


def _local_file(path: Path, name: str) -> StoredFile:
    try:
        stat = path.stat()
    except OSError as exc:
        raise ModelStoreError(f"{path}: cannot be read ({exc.strerror})") from exc
    return StoredFile(str(path), name, f"mtime:{stat.st_mtime_ns}:size:{stat.st_size}", stat.st_size)


class S3Store(Store):
    """`s3://bucket/prefix` through boto3; ETags come from HeadObject and ListObjectsV2."""

    def __init__(self, bucket: str, prefix: str) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._client = s3_client(read_timeout_s=LIST_TIMEOUT_S)

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def versions(self, name: str) -> list[int]:
        found = set()
        for page in self._pages(self._key(name) + "/", delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                last = common["Prefix"].rstrip("/").rsplit("/", 1)[-1]
                if _VERSION.fullmatch(last):
                    found.add(int(last))
        return sorted(found)

    def _file(self, name: str) -> StoredFile:
        key = self._key(name)
        uri = f"s3://{self.bucket}/{key}"
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if code_of(exc) in ("404", "NoSuchKey"):
                self._check_bucket(uri)
            raise store_error(uri, exc) from exc
        return StoredFile(uri, name, head["ETag"].strip('"'), int(head["ContentLength"]))

    def entries(self) -> list[str]:
        top = self._key() + "/" if self.prefix else ""
        names: set[str] = set()
        for page in self._pages(top, delimiter="/"):
            names.update(c["Prefix"][len(top) :].rstrip("/") for c in page.get("CommonPrefixes", []))
            names.update(item["Key"][len(top) :] for item in page.get("Contents", []) if item["Key"] != top)
        return sorted(names)

    def _folder_files(self, name: str) -> tuple[StoredFile, ...]:
        folder = self._key(name) + "/"
        found = [
            StoredFile(
                f"s3://{self.bucket}/{item['Key']}", item["Key"][len(folder) :], item["ETag"].strip('"'), item["Size"]
            )
            for page in self._pages(folder)
            for item in page.get("Contents", [])
            if not item["Key"].endswith("/")
        ]
        return tuple(sorted(found, key=lambda f: f.name))

    def _pages(self, prefix: str, delimiter: str = "") -> list[dict[str, Any]]:
        paginator = self._client.get_paginator("list_objects_v2")
        extra = {"Delimiter": delimiter} if delimiter else {}
        try:
            return list(paginator.paginate(Bucket=self.bucket, Prefix=prefix, **extra))
        except Exception as exc:
            raise store_error(f"s3://{self.bucket}/{prefix}", exc) from exc

    def _check_bucket(self, uri: str) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            if code_of(exc) in ("404", "NoSuchBucket"):
                raise ModelStoreError(f"{uri}: no such bucket {self.bucket!r}") from exc
