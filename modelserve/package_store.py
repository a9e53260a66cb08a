"""Packages and the replica runtime in the model store, for clusters the controller cannot upload to.

A KubeRay cluster's pods fetch their code from `s3://<bucket>/<prefix>/_packages/<name>-<digest>.zip`
(Ray's runtime_env reads `s3://` py_modules itself). Ray strips the single top-level directory
of a remote zip and puts what is left on the path, so each zip holds `<name>-<digest>/algopkg/...`
(or `.../modelserve/...`): `import algopkg.<Package>` works as with a `gcs://` upload.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

from modelserve import apply, plan
from modelserve.packaging import tree_digest
from modelserve.s3 import s3_client, store_error
from modelserve.settings import Config

PACKAGES = "_packages"
_UPLOAD_TIMEOUT_S = 60.0


def zipped(staged_dir: Path, top: str) -> bytes:
    """`staged_dir` (e.g. `algopkg/`) as a zip under one directory `top`: `top/algopkg/...`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(staged_dir.rglob("*")):
            if path.is_file():
                name = f"{top}/{staged_dir.name}/{path.relative_to(staged_dir).as_posix()}"
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # same bytes for the same files
                info.external_attr = 0o644 << 16
                archive.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def package_uri(store: str, name: str, digest: str) -> str:
    return f"{store.rstrip('/')}/{PACKAGES}/{name}-{digest}.zip"


def upload(staged_dir: Path, store: str, name: str, client: Any) -> str:
    """Put the zip of `staged_dir` at its URI under `store` (`s3://bucket/prefix`) unless it is there."""
    digest = tree_digest(staged_dir)[:16]
    uri = package_uri(store, name, digest)
    bucket, _, key = uri[len("s3://") :].partition("/")
    try:
        client.head_object(Bucket=bucket, Key=key)
        return uri
    except Exception as exc:  # 404: not there yet; anything else is raised by the put below
        if getattr(exc, "response", {}).get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise store_error(uri, exc) from exc
    try:
        client.put_object(Bucket=bucket, Key=key, Body=zipped(staged_dir, f"{name}-{digest}"))
    except Exception as exc:
        raise store_error(uri, exc) from exc
    return uri


def store_artifacts(config: Config, client: Any = None) -> plan.Artifacts:
    """`apply.upload_artifacts` for a cluster that reads code from `[MODEL SERVE] model_zoo` (s3://)."""
    store = config.serve.model_zoo
    client = client or s3_client(_UPLOAD_TIMEOUT_S)
    return apply.artifacts(config, lambda staged, name: upload(staged, store, name, client))
