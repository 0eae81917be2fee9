"""LocalStore (the client's side) and FileChannel / open_channel (the runner's side)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from batchmagic.channel import FileChannel, open_channel
from batchmagic.errors import ConfigError
from batchmagic.protocol import encode_log_record
from batchmagic.storage import LocalStore

EXPIRY = datetime.now(UTC) + timedelta(hours=1)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def test_root_is_created(tmp_path: Path) -> None:
    LocalStore(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()


def test_put_get_bytes(store: LocalStore) -> None:
    store.put_bytes("runs/r1/t1/result", b"\x00\x01payload")
    assert store.get_bytes("runs/r1/t1/result") == b"\x00\x01payload"
    store.put_bytes("runs/r1/t1/result", b"replaced")
    assert store.get_bytes("runs/r1/t1/result") == b"replaced"
    # the atomic write leaves no temporary file behind
    assert [p.name for p in (store.root / "runs/r1/t1").iterdir()] == ["result"]


def test_get_missing_raises_key_error(store: LocalStore) -> None:
    with pytest.raises(KeyError):
        store.get_bytes("runs/nope/result")


def test_put_file(store: LocalStore, tmp_path: Path) -> None:
    src = tmp_path / "bundle.zip"
    src.write_bytes(b"zipdata")
    store.put_file("runs/r1/bundle", src)
    assert store.get_bytes("runs/r1/bundle") == b"zipdata"
    assert src.exists()
    # putting a file onto itself is a no-op, not a truncation
    store.put_file("runs/r1/bundle", store.path("runs/r1/bundle"))
    assert store.get_bytes("runs/r1/bundle") == b"zipdata"


def test_read_from_offsets(store: LocalStore) -> None:
    assert store.read_from("runs/r1/t1/output.log", 0) == b""
    store.put_bytes("runs/r1/t1/output.log", b"0123456789")
    assert store.read_from("runs/r1/t1/output.log", 0) == b"0123456789"
    assert store.read_from("runs/r1/t1/output.log", 4) == b"456789"
    assert store.read_from("runs/r1/t1/output.log", 10) == b""
    assert store.read_from("runs/r1/t1/output.log", 99) == b""


def test_read_from_follows_appends(store: LocalStore) -> None:
    key = "runs/r1/t1/output.log"
    channel = FileChannel(store.path(key))
    store.put_bytes(key, b"")
    offset = 0
    seen = b""
    for part in (b"first\n", b"second\n", b"", b"third\n"):
        channel.append(part)
        new = store.read_from(key, offset)
        offset += len(new)
        seen += new
        assert new == part
    assert seen == b"first\nsecond\nthird\n"


def test_exists(store: LocalStore) -> None:
    assert not store.exists("runs/r1/bundle")
    store.put_bytes("runs/r1/bundle", b"x")
    assert store.exists("runs/r1/bundle")
    assert not store.exists("runs/r1")  # a prefix is not a key


def test_delete_prefix_is_idempotent(store: LocalStore) -> None:
    store.put_bytes("runs/r1/bundle", b"b")
    store.put_bytes("runs/r1/t1/result", b"r")
    store.put_bytes("runs/r1/t1/output.log", b"l")
    store.put_bytes("runs/r2/bundle", b"other")
    assert store.delete_prefix("runs/r1/") == 3
    assert not store.exists("runs/r1/bundle")
    assert store.delete_prefix("runs/r1/") == 0
    assert store.delete_prefix("runs/never") == 0
    assert store.get_bytes("runs/r2/bundle") == b"other"


def test_delete_prefix_of_a_single_key(store: LocalStore) -> None:
    store.put_bytes("runs/r3/bundle", b"b")
    assert store.delete_prefix("runs/r3/bundle") == 1
    assert store.delete_prefix("runs/r3/bundle") == 0


@pytest.mark.parametrize("key", ["../outside", "runs/../../outside", "/etc/passwd", "", "."])
def test_key_escaping_the_root_is_refused(store: LocalStore, key: str) -> None:
    with pytest.raises(ValueError, match="escapes"):
        store.put_bytes(key, b"x")
    with pytest.raises(ValueError):
        store.delete_prefix(key)
    assert not (store.root.parent / "outside").exists()


def test_url_is_a_file_url_the_runner_can_open(store: LocalStore) -> None:
    store.put_bytes("runs/r 1/bundle", b"data")
    url = store.url("runs/r 1/bundle", permissions="r", expiry=EXPIRY)
    assert url.startswith("file://")
    assert " " not in url
    assert open_channel(url).read() == b"data"
    assert str(store.root) in store.describe()


def test_file_channel_write_creates_parents_and_replaces(tmp_path: Path) -> None:
    channel = FileChannel(tmp_path / "deep" / "er" / "result")
    channel.write(b"one")
    channel.write(b"two")
    assert channel.read() == b"two"
    assert sorted(p.name for p in (tmp_path / "deep" / "er").iterdir()) == ["result"]


def test_file_channel_append(tmp_path: Path) -> None:
    channel = FileChannel(tmp_path / "log")
    channel.append(b"a")
    channel.append(b"bc")
    assert channel.read() == b"abc"


def test_file_channel_download_to(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"payload")
    FileChannel(tmp_path / "src").download_to(tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == b"payload"


def test_open_channel_file_url(tmp_path: Path) -> None:
    path = tmp_path / "with space" / "x"
    path.parent.mkdir()
    channel = open_channel(path.as_uri())
    assert isinstance(channel, FileChannel)
    assert channel.path == path
    channel.write(b"hi")
    assert path.read_bytes() == b"hi"


@pytest.mark.parametrize("url", ["ftp://host/x", "s3://bucket/key", "/plain/path", "relative/path", "gs://b/k"])
def test_open_channel_rejects_unknown_schemes(url: str) -> None:
    with pytest.raises(ValueError, match="unsupported URL scheme"):
        open_channel(url)


def test_log_record_is_one_json_line() -> None:
    record = encode_log_record(1700000000.123456, "e", "héllo\nworld")
    assert record.endswith(b"\n") and record.count(b"\n") == 1
    data = json.loads(record)
    assert tuple(data) == ("t", "s", "d")
    assert data == {"t": 1700000000.123, "s": "e", "d": "héllo\nworld"}


def test_listing_skips_a_file_deleted_while_it_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run torn down while the store is surveyed (the size limit's trim runs beside runs) loses files
    between the listing's walk and its look at each: they are left out, the listing does not fail."""
    store = LocalStore(tmp_path)
    store.put_bytes("runs/a/spec.json", b"{}")
    store.put_bytes("runs/b/spec.json", b"{}")
    walk = Path.rglob

    def walk_then_delete(self: Path, pattern: str):  # type: ignore[no-untyped-def]
        found = list(walk(self, pattern))
        (tmp_path / "runs" / "a" / "spec.json").unlink()
        return iter(found)

    monkeypatch.setattr(Path, "rglob", walk_then_delete)
    assert store.list_keys("") == [("runs/b/spec.json", 2)]


def test_the_blob_storage_clients_back_off_is_the_setting(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``BATCHMAGIC_STORAGE_PATIENCE`` reaches the client the Azure backend stores runs with: a refused
    connection retried 3 times, backing off about 3, 5, 9 s at the default 17s, and in proportion (jitter too)
    at another."""
    from batchmagic.backends.azure.calls import blob_store
    from batchmagic.config import Settings
    from tests.support.azurite import ACCOUNT, KEY

    url = f"http://127.0.0.1:1/{ACCOUNT}"  # nothing listens on port 1
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", f"AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={url};")

    def backoffs(store: Any) -> list[float]:
        policy = store._container._config.retry_policy
        assert policy.total_retries == 4
        return [policy.get_backoff_time({"count": n}) for n in (1, 2, 3) for _ in range(50)]

    waits = backoffs(blob_store(Settings.from_env()))
    assert 14 < sum(waits) / 50 < 20 and max(waits) <= 12  # 3, 5, 9 s, each up to 3 s either way
    monkeypatch.setenv("BATCHMAGIC_STORAGE_PATIENCE", "1.7s")
    store = blob_store(Settings.from_env())
    waits = backoffs(store)
    assert 1.4 < sum(waits) / 50 < 2.0 and max(waits) <= 1.2  # a tenth
    slept: list[float] = []
    store._container._config.retry_policy.sleep = lambda settings, transport: slept.append(settings["count"])
    with pytest.raises(Exception, match="Connection refused"):
        store.get_bytes("runs/x")
    assert slept == [1, 2, 3]  # each retry backed off, then the error
    monkeypatch.setenv("BATCHMAGIC_STORAGE_PATIENCE", "soon")
    with pytest.raises(ConfigError, match="BATCHMAGIC_STORAGE_PATIENCE='soon' is not a duration"):
        Settings.from_env()
