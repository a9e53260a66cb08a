"""A conf.ini's `model` entries resolved in their stores (modelstore.py): the files, and the content,
each section serves.

Resolved once per command, before anything on a cluster changes: `check` and every apply verify
that each file and version exists and is readable, `@latest` is pinned to a number, and the files'
ETags (or content digests) go into the replica's args, so new content under the same name rolls
the section, as a changed local file always did.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from modelserve.modelstore import ModelStoreError, Resolved, Store, StoredFile, open_store, parse_ref
from modelserve.packaging import files_digest

if TYPE_CHECKING:
    from modelserve.settings import SectionSpec


@dataclass(frozen=True)
class SectionModels:
    """One section's model files, resolved in its `zoo`."""

    zoo: str
    resolved: tuple[Resolved, ...] = ()

    @property
    def files(self) -> tuple[StoredFile, ...]:
        """Every file in conf.ini order; a version's files named `<name>/<N>/<file>` (their path in the zoo)."""
        return tuple(
            replace(f, name=f"{r.ref.name}/{r.ref.version}/{f.name}") if r.ref.versioned else f
            for r in self.resolved
            for f in r.files
        )

    @property
    def pinned(self) -> tuple[str, ...]:
        """The entries as served: `digits@3` for `digits@latest`."""
        return tuple(r.pinned for r in self.resolved)

    @property
    def digest(self) -> str:
        """Changes with any file's name or content: part of what rolls the section. An object store's
        ETags say it; a directory's files are read (once per apply: a `touch` rolls nothing)."""
        if not self.remote:
            return files_digest(Path(f.uri) for f in self.files)
        return hashlib.sha256("\0".join(r.digest for r in self.resolved).encode()).hexdigest()[:16]

    @property
    def remote(self) -> bool:
        return self.zoo.startswith("s3://")


def resolve(section: str, zoo: str, entries: Iterable[str], stores: dict[str, Store] | None = None) -> SectionModels:
    """A section's `model` entries in `zoo`.

    Raises:
        ModelStoreError: naming `[section] model`, the URI and the cause (of the first entry that fails).
    """
    stores = {} if stores is None else stores
    resolved = []
    for entry in entries:
        try:
            store = stores.get(zoo) or stores.setdefault(zoo, open_store(zoo))
            resolved.append(store.resolve(parse_ref(entry)))
        except ModelStoreError as exc:
            fix = "upload it or fix the name" if zoo.startswith("s3://") else "put it in model_zoo or fix the name"
            raise ModelStoreError(f"[{section}] model = {entry!r}: {exc}; {fix}") from None
    return SectionModels(zoo, tuple(resolved))


def multiplexed_problems(spec: SectionSpec, store_uri: str, stores: dict[str, Store]) -> list[str]:
    """What is wrong with a multiplexed section (`models`): its store must list, hold a model, and the
    section must not also name `model` files."""
    problems = []
    if spec.model_files:
        problems.append(
            f"[{spec.section}] model = {', '.join(spec.model_files)!r}: a section with `models` (many models, "
            "one per request) serves no `model` files; remove one of the two keys"
        )
    try:
        store = stores.get(store_uri) or stores.setdefault(store_uri, open_store(store_uri))
        if not store.entries():
            problems.append(f"[{spec.section}] models = {spec.models!r}: {store_uri} holds no model; put one in it")
    except ModelStoreError as exc:
        problems.append(f"[{spec.section}] models = {spec.models!r}: {exc}; create it or fix the path")
    return problems
