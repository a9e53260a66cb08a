"""The model store and the node cache against a real S3 API (moto's server, test/s3server.py); no Ray."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import MEASURED
from s3server import S3Server

from modelserve import modelcache
from modelserve.models import SectionModels
from modelserve.modelstore import ModelStoreError, open_store, parse_ref

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture(autouse=True)
def aws_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """The standard AWS variables point at the test server; no profile or file of this machine counts."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    yield
    modelcache.release_all()
    s3.get_delay_s, s3.cut_gets = 0.0, ""


@pytest.fixture
def bucket(s3: S3Server) -> str:
    """A fresh bucket holding `zoo/w.npz` and `zoo/digits/{1,2,3}/` (a.bin, sub/b.bin), plus noise."""
    name = f"models-{uuid.uuid4().hex[:12]}"
    client = s3.client()
    client.create_bucket(Bucket=name)
    client.put_object(Bucket=name, Key="zoo/w.npz", Body=b"w" * 1000)
    for version in (1, 2, 3):
        client.put_object(Bucket=name, Key=f"zoo/digits/{version}/sub/b.bin", Body=b"b%d" % version)
        client.put_object(Bucket=name, Key=f"zoo/digits/{version}/a.bin", Body=b"a%d" % version)
    client.put_object(Bucket=name, Key="zoo/digits/notes/readme.txt", Body=b"not a version")
    client.put_object(Bucket=name, Key="zoo/digits/03/a.bin", Body=b"not canonical")
    s3.requests.clear()
    return name


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_a_plain_file_a_version_and_latest_resolve_with_their_etags(bucket: str) -> None:
    store = open_store(f"s3://{bucket}/zoo")
    (plain,) = store.files(parse_ref("w.npz"))
    assert (plain.uri, plain.name, plain.etag, plain.size) == (
        f"s3://{bucket}/zoo/w.npz",
        "w.npz",
        _md5(b"w" * 1000),
        1000,
    )
    assert store.versions("digits") == [1, 2, 3]
    two = store.resolve(parse_ref("digits@2"))
    assert two.pinned == "digits@2"
    assert [(f.name, f.etag, f.size) for f in two.files] == [("a.bin", _md5(b"a2"), 2), ("sub/b.bin", _md5(b"b2"), 2)]
    assert store.resolve(parse_ref("digits@latest")).pinned == "digits@3"
    open_store(f"s3://{bucket}").resolve(parse_ref("zoo/digits@1"))  # a bucket's root is a zoo too


def test_a_local_directory_store_resolves_the_same_way(tmp_path: Path) -> None:
    (tmp_path / "digits" / "1").mkdir(parents=True)
    (tmp_path / "digits" / "4" / "sub").mkdir(parents=True)
    (tmp_path / "digits" / "4" / "sub" / "b.bin").write_bytes(b"b")
    (tmp_path / "digits" / "4" / "a.bin").write_bytes(b"a")
    (tmp_path / "digits" / "1" / "a.bin").write_bytes(b"a")
    (tmp_path / "w.npz").write_bytes(b"w")
    store = open_store(str(tmp_path))
    assert store.versions("digits") == [1, 4] and store.versions("nothing") == []
    latest = store.resolve(parse_ref("digits@latest"))
    assert latest.pinned == "digits@4" and [f.name for f in latest.files] == ["a.bin", "sub/b.bin"]
    assert latest.files[0].etag.startswith("mtime:") and latest.files[0].etag.endswith(":size:1")  # no read
    paths = modelcache.fetch(store.uri, latest.files, tmp_path / "cache", 1 << 20)
    assert paths == [tmp_path / "digits" / "4" / "a.bin", tmp_path / "digits" / "4" / "sub" / "b.bin"]
    assert not (tmp_path / "cache").exists()  # a local store needs no cache
    os.utime(paths[0], (1, 1))
    rolled_by = SectionModels(store.uri, (latest,)).digest  # what rolls a section: the content
    assert SectionModels(store.uri, (store.resolve(parse_ref("digits@4")),)).digest == rolled_by  # not a touch
    paths[0].write_bytes(b"A")
    assert SectionModels(store.uri, (store.resolve(parse_ref("digits@4")),)).digest != rolled_by  # new content does
    with pytest.raises(ModelStoreError, match=r"digits/2/: no such version; the versions there are: 1, 4"):
        store.resolve(parse_ref("digits@2"))
    with pytest.raises(ModelStoreError, match=r"nope\.npz: no such file"):
        store.resolve(parse_ref("nope.npz"))
    (tmp_path / "digits" / "5").mkdir()  # an upload not begun yet
    with pytest.raises(ModelStoreError, match=r"digits/5/: version 5 holds no files"):
        store.resolve(parse_ref("digits@latest"))


@pytest.mark.parametrize(
    ("zoo", "ref", "message"),
    [
        ("s3://{bucket}/zoo", "nope.npz", "s3://{bucket}/zoo/nope.npz: no such key"),
        (
            "s3://{bucket}/zoo",
            "digits@7",
            "s3://{bucket}/zoo/digits/7/: no such version; the versions there are: 1, 2, 3",
        ),
        ("s3://{bucket}/zoo", "other@latest", "s3://{bucket}/zoo/other/: no numbered versions"),
        ("s3://{bucket}-gone/zoo", "w.npz", "s3://{bucket}-gone/zoo/w.npz: no such bucket '{bucket}-gone'"),
        ("s3://{bucket}-gone/zoo", "digits@1", "s3://{bucket}-gone/zoo/digits/1/: no such bucket '{bucket}-gone'"),
    ],
)
def test_what_is_missing_is_named_with_its_uri(bucket: str, zoo: str, ref: str, message: str) -> None:
    with pytest.raises(ModelStoreError) as caught:
        open_store(zoo.format(bucket=bucket)).resolve(parse_ref(ref))
    assert str(caught.value).startswith(message.format(bucket=bucket))


def test_credentials_without_a_grant_are_access_denied(
    s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    import moto.settings

    iam = boto3.client("iam", endpoint_url=s3.endpoint)  # moto's IAM, on the same server
    iam.create_user(UserName=f"reader-{bucket}")  # a user with no policy: may read nothing
    key = iam.create_access_key(UserName=f"reader-{bucket}")["AccessKey"]
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server now checks IAM
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    store = open_store(f"s3://{bucket}/zoo")
    for ref, uri in (("w.npz", "zoo/w.npz"), ("digits@1", "zoo/digits/1/")):
        with pytest.raises(ModelStoreError, match=rf"^s3://{bucket}/{uri}: access denied"):
            store.resolve(parse_ref(ref))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOSUCHKEY")
    with pytest.raises(ModelStoreError, match=r"the credentials were refused \(InvalidAccessKeyId\)"):
        open_store(f"s3://{bucket}/zoo").versions("digits")


def test_a_stopped_server_is_an_unreachable_endpoint_within_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    gone = S3Server()
    gone.stop()
    monkeypatch.setenv("AWS_ENDPOINT_URL", gone.endpoint)
    started = time.monotonic()
    with pytest.raises(ModelStoreError, match=rf"s3://models/zoo/w\.npz: endpoint unreachable .*{gone.endpoint}"):
        open_store("s3://models/zoo").resolve(parse_ref("w.npz"))
    with pytest.raises(ModelStoreError, match="endpoint unreachable"):
        open_store("s3://models/zoo").versions("digits")
    MEASURED.append(f"model store: a stopped server is named unreachable in {time.monotonic() - started:.1f} s (twice)")
    assert time.monotonic() - started < 5


def test_a_store_that_never_answers_is_an_unreachable_endpoint_within_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # connects (the kernel's backlog), never answers
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        with pytest.raises(ModelStoreError, match=r"s3://models/zoo/digits/: endpoint unreachable \(Read timeout"):
            open_store("s3://models/zoo").versions("digits")
    MEASURED.append(
        f"model store: a store that never answers is named unreachable in {time.monotonic() - started:.1f} s"
    )
    assert time.monotonic() - started < 10


def _fetch_in_a_process(zoo: str, ref: str, cache: str, start: Any, hold: Any, answers: Any) -> None:
    files = open_store(zoo).resolve(parse_ref(ref)).files
    start.wait()
    answers.put([str(p) for p in modelcache.fetch(zoo, files, cache, 1 << 30)])
    hold.wait()  # the process uses the files until it is told to end


class _Workers:
    """Processes (spawned, as replicas are) that each fetch a ref at once and use it until `end`."""

    def __init__(self) -> None:
        self.spawn = multiprocessing.get_context("spawn")
        self.hold = self.spawn.Event()
        self.answers = self.spawn.Queue()
        self.started: list[Any] = []

    def start(self, n: int, zoo: str, ref: str, cache: Path) -> list[list[str]]:
        start = self.spawn.Barrier(n)
        for _ in range(n):
            args = (zoo, ref, str(cache), start, self.hold, self.answers)
            self.started.append(self.spawn.Process(target=_fetch_in_a_process, args=args))
            self.started[-1].start()
        return [self.answers.get(timeout=60) for _ in range(n)]

    def end(self) -> None:
        self.hold.set()
        for worker in self.started:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.terminate()
        assert all(worker.exitcode == 0 for worker in self.started)


@pytest.fixture
def workers() -> Iterator[_Workers]:
    started = _Workers()
    try:
        yield started
    finally:
        started.end()


def test_four_processes_fetching_the_same_two_files_at_once_download_each_once(
    s3: S3Server, bucket: str, tmp_path: Path, workers: _Workers
) -> None:
    zoo, cache = f"s3://{bucket}/zoo", tmp_path / "cache"
    s3.get_delay_s = 0.5  # every download is slow, so the four overlap: without the lock, 4 GETs each
    got = workers.start(4, zoo, "digits@2", cache)
    workers.end()
    gets = [s3.gets(f"{bucket}/zoo/digits/2/{name}") for name in ("a.bin", "sub/b.bin")]
    MEASURED.append(f"model cache: 4 processes fetching 2 files at once: GET requests per file {gets}")
    assert gets == [1, 1]
    assert all(paths == got[0] for paths in got)
    assert [Path(p).read_bytes() for p in got[0]] == [b"a2", b"b2"]
    assert Path(got[0][1]).parent.parent == Path(got[0][0]).parent  # the files of a version sit together

    files = open_store(zoo).resolve(parse_ref("digits@2")).files
    before = s3.total()
    assert [str(p) for p in modelcache.fetch(zoo, files, cache, 1 << 30)] == got[0]
    assert s3.total() == before  # a hit: not even a HEAD
    MEASURED.append(f"model cache: a second fetch of the same 2 files: {s3.total() - before} requests")


@pytest.mark.parametrize("cut", ["cut", "short"])
def test_a_cut_download_leaves_no_file_in_place(s3: S3Server, bucket: str, tmp_path: Path, cut: str) -> None:
    zoo, cache = f"s3://{bucket}/zoo", tmp_path / "cache"
    files = open_store(zoo).resolve(parse_ref("w.npz")).files
    s3.cut_gets = cut  # "cut": the connection closes half-way; "short": a well-formed answer of half the bytes
    with pytest.raises(ModelStoreError, match=r"w\.npz: the download was cut"):
        modelcache.fetch(zoo, files, cache, 1 << 30)
    assert list((cache / "blobs").iterdir()) == [] and list((cache / "tmp").iterdir()) == []
    s3.cut_gets = ""
    (path,) = modelcache.fetch(zoo, files, cache, 1 << 30)
    assert path.read_bytes() == b"w" * 1000 and s3.gets(f"{bucket}/zoo/w.npz") == 2


def test_a_changed_object_is_a_new_entry_and_the_old_etag_is_not_served_as_new(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    zoo, cache = f"s3://{bucket}/zoo", tmp_path / "cache"
    before = open_store(zoo).resolve(parse_ref("w.npz"))
    old = before.files
    assert open_store(zoo).resolve(parse_ref("w.npz")).digest == before.digest
    (old_path,) = modelcache.fetch(zoo, old, cache, 1 << 30)
    s3.client().put_object(Bucket=bucket, Key="zoo/w.npz", Body=b"v" * 1000)
    after = open_store(zoo).resolve(parse_ref("w.npz"))
    new = after.files
    assert new[0].etag != old[0].etag and after.digest != before.digest  # the section rolls
    (new_path,) = modelcache.fetch(zoo, new, cache, 1 << 30)
    assert new_path != old_path and new_path.read_bytes() == b"v" * 1000 and old_path.read_bytes() == b"w" * 1000
    assert len(list((cache / "blobs").iterdir())) == 2 and s3.gets(f"{bucket}/zoo/w.npz") == 2
    modelcache.release_all()
    with pytest.raises(ModelStoreError, match="changed since it was resolved"):  # If-Match: never the new bytes
        modelcache.fetch(zoo, old, tmp_path / "other-cache", 1 << 30)


def test_eviction_keeps_the_cap_drops_the_least_recently_used_and_never_one_in_use(
    s3: S3Server, bucket: str, tmp_path: Path, workers: _Workers
) -> None:
    zoo, cache = f"s3://{bucket}/zoo", tmp_path / "cache"
    client = s3.client()
    for name in "ABCD":
        client.put_object(Bucket=bucket, Key=f"zoo/{name}.bin", Body=name.encode() * 100)
    store = open_store(zoo)
    ((held,),) = workers.start(1, zoo, "A.bin", cache)  # a process that uses A throughout

    def fetch(name: str) -> Path:
        time.sleep(0.05)  # file times tick coarsely: each use is later than the one before
        (path,) = modelcache.fetch(zoo, store.files(parse_ref(f"{name}.bin")), cache, 300)
        modelcache.release_all()  # this process stops using it
        return path.resolve()

    def cached() -> set[bytes]:
        return {p.read_bytes()[:1] for p in (cache / "blobs").iterdir()}

    b, c = fetch("B"), fetch("C")
    assert cached() == {b"A", b"B", b"C"}  # 300 bytes: at the cap
    fetch("B")  # B is used again: C is now the least recently used not in use
    fetch("D")
    assert cached() == {b"A", b"B", b"D"} and not c.exists() and b.exists()
    fetch("C")  # A is the oldest, but in use: B goes
    assert cached() == {b"A", b"C", b"D"}
    assert Path(held).read_bytes() == b"A" * 100
    workers.end()
    fetch("B")  # A's process has ended: A is the least recently used, and free
    assert cached() == {b"B", b"C", b"D"}
    assert sum(p.stat().st_size for p in (cache / "blobs").iterdir()) <= 300
    assert all(link.exists() for link in (cache / "views").rglob("*"))  # no view points at an evicted blob


def test_a_store_of_many_models_lists_them_and_each_is_a_file_or_a_folder(bucket: str, tmp_path: Path) -> None:
    """`models` (multiplexing): the names at the store's top, in S3 and in a directory alike."""
    (tmp_path / "digits" / "1").mkdir(parents=True)
    (tmp_path / "digits" / "1" / "a.bin").write_bytes(b"a1")
    (tmp_path / "w.npz").write_bytes(b"w")
    for store in (open_store(f"s3://{bucket}/zoo"), open_store(str(tmp_path))):
        assert store.entries() == ["digits", "w.npz"]
        assert [f.name for f in store.entry("w.npz")] == ["w.npz"]
        assert "1/a.bin" in [f.name for f in store.entry("digits")]
        with pytest.raises(ModelStoreError, match="no such model"):
            store.entry("absent")
