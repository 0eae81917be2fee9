"""The bundle format: write, read back, verify, refuse what was altered."""

from __future__ import annotations

import json
import platform
import zipfile
from pathlib import Path

import cloudpickle
import pytest

from batchmagic.package.bundle import FORMAT_VERSION, MANIFEST, BundleError, BundleReader, BundleWriter, Manifest


def _write(path: Path, *, values: dict[str, object] | None = None) -> Manifest:
    manifest = Manifest(batchmagic="0.0.test", modules={"np": "numpy"}, bound=["y"], deleted=["tmp"])
    with BundleWriter(path, manifest) as writer:
        writer.add_cell("y = x * 2\n")
        for name, value in (values or {"x": 21}).items():
            with writer.open_value(name) as f:
                cloudpickle.dump(value, f)
        writer.add_source("helpers.py", b"def h():\n    return 1\n")
        writer.add_source("pkg/__init__.py", b"")
    return manifest


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "b.zip"
    written = _write(path, values={"x": 21, "d": {"a": [1, 2]}})
    reader = BundleReader(path)
    reader.verify()
    assert reader.cell() == "y = x * 2\n"
    with reader.open_value("x") as f:
        assert cloudpickle.load(f) == 21
    with reader.open_value("d") as f:
        assert cloudpickle.load(f) == {"a": [1, 2]}
    manifest = reader.manifest
    assert manifest == written
    assert manifest.format == FORMAT_VERSION
    assert manifest.python == platform.python_version()
    assert manifest.modules == {"np": "numpy"}
    assert manifest.sources == ["helpers.py", "pkg/__init__.py"]
    assert set(manifest.values) == {"x", "d"}
    assert manifest.values["x"] == len(cloudpickle.dumps(21))
    assert len(manifest.sha256) == 64
    dest = tmp_path / "src"
    reader.extract_sources(dest)
    assert (dest / "helpers.py").read_bytes() == b"def h():\n    return 1\n"
    assert (dest / "pkg" / "__init__.py").exists()
    reader.close()


def test_entries_are_stored_in_order_with_the_manifest_last(tmp_path: Path) -> None:
    path = tmp_path / "b.zip"
    _write(path)
    with zipfile.ZipFile(path) as zf:
        names = [i.filename for i in zf.infolist()]
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    assert names == ["cell.py", "values/x.pkl", "src/helpers.py", "src/pkg/__init__.py", MANIFEST]


def test_same_content_gives_the_same_hash(tmp_path: Path) -> None:
    assert _write(tmp_path / "a.zip").sha256 == _write(tmp_path / "b.zip").sha256
    assert _write(tmp_path / "c.zip", values={"x": 22}).sha256 != _write(tmp_path / "a.zip").sha256


def test_tampered_byte_fails_verify(tmp_path: Path) -> None:
    path = tmp_path / "b.zip"
    _write(path, values={"x": b"A" * 1000})
    data = bytearray(path.read_bytes())
    at = data.index(b"A" * 1000) + 500
    data[at] = ord("B")
    path.write_bytes(bytes(data))
    reader = BundleReader(path)
    with pytest.raises(BundleError):
        reader.verify()


def test_tampered_entry_with_valid_zip_fails_verify(tmp_path: Path) -> None:
    # Rewrite the zip cleanly (valid CRCs) with one entry changed: only the hash can tell.
    path = tmp_path / "b.zip"
    _write(path)
    altered = tmp_path / "altered.zip"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(altered, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, b"y = x * 3\n" if info.filename == "cell.py" else data)
    reader = BundleReader(altered)
    with pytest.raises(BundleError, match="hash"):
        reader.verify()


def test_wrong_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.zip"
    _write(path)
    altered = tmp_path / "v99.zip"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(altered, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == MANIFEST:
                manifest = json.loads(data)
                manifest["format"] = 99
                data = json.dumps(manifest).encode()
            dst.writestr(info.filename, data)
    with pytest.raises(BundleError, match="99"):
        BundleReader(altered)


def test_manifest_from_json_ignores_unknown_fields() -> None:
    data = json.loads(Manifest(bound=["a"]).to_json())
    data["added_later"] = True
    assert Manifest.from_json(json.dumps(data)).bound == ["a"]


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04garbage"])
def test_not_a_bundle(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "b.zip"
    path.write_bytes(content)
    with pytest.raises(BundleError):
        BundleReader(path)


def test_zip_without_manifest(tmp_path: Path) -> None:
    path = tmp_path / "b.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("cell.py", "x = 1")
    with pytest.raises(BundleError, match="not a batchmagic bundle"):
        BundleReader(path)


def test_truncated_bundle(tmp_path: Path) -> None:
    path = tmp_path / "b.zip"
    _write(path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(BundleError):
        BundleReader(path).verify()


def test_big_value_is_streamed_and_sized(tmp_path: Path) -> None:
    path = tmp_path / "big.zip"
    size = 20 * 1024 * 1024
    chunk = bytes(range(256)) * 4096  # 1 MiB
    manifest = Manifest()
    with BundleWriter(path, manifest) as writer:
        writer.add_cell("n = len(blob)")
        with writer.open_value("blob") as f:
            for _ in range(size // len(chunk)):
                f.write(chunk)
    assert manifest.values == {"blob": size}
    reader = BundleReader(path)
    assert reader.manifest.values == {"blob": size}
    reader.verify()
    with reader.open_value("blob") as f:
        assert f.read(len(chunk)) == chunk
    reader.close()
    assert path.stat().st_size > size


def test_failure_while_writing_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "b.zip"
    with pytest.raises(RuntimeError), BundleWriter(path, Manifest()) as writer:
        writer.add_cell("x = 1")
        with writer.open_value("v") as f:
            f.write(b"partial")
            raise RuntimeError("pickling failed")
    assert not path.exists()
