"""capture(): cell + namespace -> bundle, and the errors that stop a submit."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pandas as pd
import pytest

import batchmagic
from batchmagic.errors import CaptureError
from batchmagic.package.bundle import FORMAT_VERSION, BundleReader
from batchmagic.package.capture import CapturedCell, UndefinedNameWarning, capture

LOCAL_NAMES = ("bm_localmod", "bm_localpkg", "bm_notyet")


def _values(captured: CapturedCell) -> dict[str, Any]:
    reader = BundleReader(captured.path)
    reader.verify()
    out = {}
    for name in reader.manifest.values:
        with reader.open_value(name) as f:
            out[name] = cloudpickle.load(f)
    reader.close()
    return out


def _main_namespace(code: str) -> dict[str, Any]:
    """A namespace like a notebook's: what ``code`` defines lives in ``__main__``."""
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(textwrap.dedent(code), ns)
    return ns


@pytest.fixture
def local_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory with a local module and a local package, importable."""
    root = tmp_path / "proj"
    (root / "bm_localpkg").mkdir(parents=True)
    (root / "bm_localmod.py").write_text("def double(v):\n    return 2 * v\n\nclass Point:\n    x = 1\n")
    (root / "bm_localpkg" / "__init__.py").write_text("from bm_localpkg.sub import triple\n")
    (root / "bm_localpkg" / "sub.py").write_text("def triple(v):\n    return 3 * v\n")
    (root / "bm_notyet.py").write_text("VALUE = 7\n")
    (root / "bm_localpkg" / "__pycache__").mkdir()
    (root / "bm_localpkg" / "__pycache__" / "junk.py").write_text("# not shipped\n")
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in list(sys.modules):
        if name.split(".")[0] in LOCAL_NAMES:
            del sys.modules[name]


# --- values ---


def test_plain_values_by_value(tmp_path: Path) -> None:
    df = pd.DataFrame({"x": range(100), "y": [i * 0.5 for i in range(100)]})
    ns = {"n": 3, "cfg": {"lr": 0.1, "layers": [64, 32]}, "df": df, "unused": object()}
    captured = capture("out = df.x.sum() * n + cfg['lr']", ns, tmp_path / "b.zip")
    values = _values(captured)
    assert set(values) == {"n", "cfg", "df"}
    assert values["n"] == 3
    assert values["cfg"] == {"lr": 0.1, "layers": [64, 32]}
    pd.testing.assert_frame_equal(values["df"], df)
    assert captured.manifest.values["df"] > 0
    assert captured.outputs == ["out"]
    assert captured.size == captured.path.stat().st_size


def test_provided_names_are_neither_shipped_nor_undefined(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedNameWarning)
        captured = capture("y = lr * depth", {"lr": 0.1}, tmp_path / "b.zip", provided=["lr", "depth"])
    assert _values(captured) == {}


def test_names_bound_before_use_are_not_shipped(tmp_path: Path) -> None:
    captured = capture("df = 1\ny = df + 1", {"df": pd.DataFrame({"a": [1]})}, tmp_path / "b.zip")
    assert captured.manifest.values == {}


def test_ipython_names_are_not_shipped(tmp_path: Path) -> None:
    ns = {"In": ["", "x = 1"], "Out": {}, "get_ipython": lambda: None, "x": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedNameWarning)
        captured = capture("print(In, Out, x)", ns, tmp_path / "b.zip")
    assert set(captured.manifest.values) == {"x"}


def test_notebook_function_and_class_travel_by_value(tmp_path: Path) -> None:
    ns = _main_namespace(
        """
        SCALE = 10
        def train(d, a):
            return sum(d) * a * SCALE
        class Model:
            def __init__(self, w):
                self.w = w
            def predict(self, v):
                return self.w * v
        """
    )
    captured = capture("m = Model(train([1, 2], 0.5))\nr = m.predict(2)", ns, tmp_path / "b.zip")
    assert set(captured.manifest.values) == {"Model", "train"}
    # Load them in a fresh interpreter whose __main__ has neither: only a by-value pickle works.
    script = textwrap.dedent(
        f"""
        import cloudpickle
        from batchmagic.package.bundle import BundleReader
        r = BundleReader({str(captured.path)!r})
        ns = {{n: cloudpickle.load(r.open_value(n)) for n in ("train", "Model")}}
        print(ns["Model"](ns["train"]([1, 2], 0.5)).predict(2))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "30.0"


def test_modules_are_recorded_as_imports(tmp_path: Path) -> None:
    import json as js

    ns = {"js": js, "m": math, "pd": pd, "x": 2.0}
    captured = capture("y = m.sqrt(x)\ns = js.dumps([y])\nf = pd.DataFrame", ns, tmp_path / "b.zip")
    assert captured.manifest.modules == {"m": "math", "js": "json", "pd": "pandas"}
    assert set(captured.manifest.values) == {"x"}
    assert captured.manifest.sources == []


def test_submodule_alias_records_its_full_name(tmp_path: Path) -> None:
    import os.path as osp

    captured = capture("p = osp.join('a', 'b')", {"osp": osp}, tmp_path / "b.zip")
    assert captured.manifest.modules == {"osp": osp.__name__}


# --- local modules ---


def test_local_module_and_package_are_shipped_as_source(tmp_path: Path, local_project: Path) -> None:
    import bm_localmod  # type: ignore[import-not-found]
    import bm_localpkg  # type: ignore[import-not-found]

    ns = {"bm_localmod": bm_localmod, "bm_localpkg": bm_localpkg}
    captured = capture("y = bm_localpkg.triple(bm_localmod.double(1))", ns, tmp_path / "b.zip")
    assert captured.manifest.modules == {"bm_localmod": "bm_localmod", "bm_localpkg": "bm_localpkg"}
    assert sorted(captured.manifest.sources) == ["bm_localmod.py", "bm_localpkg/__init__.py", "bm_localpkg/sub.py"]
    reader = BundleReader(captured.path)
    reader.extract_sources(tmp_path / "out")
    assert (tmp_path / "out" / "bm_localpkg" / "sub.py").read_text() == "def triple(v):\n    return 3 * v\n"


def test_local_module_imported_by_the_cell_is_shipped(tmp_path: Path, local_project: Path) -> None:
    assert "bm_notyet" not in sys.modules
    captured = capture("import bm_notyet\nv = bm_notyet.VALUE", {}, tmp_path / "b.zip")
    assert captured.manifest.sources == ["bm_notyet.py"]
    assert captured.analysis.imported_modules == ["bm_notyet"]


def test_from_import_of_a_local_package_is_shipped(tmp_path: Path, local_project: Path) -> None:
    captured = capture("from bm_localpkg.sub import triple as t\nv = t(1)", {}, tmp_path / "b.zip")
    assert "bm_localpkg/sub.py" in captured.manifest.sources
    assert "bm_localpkg/__pycache__/junk.py" not in captured.manifest.sources


def test_instance_of_a_local_class_ships_its_module(tmp_path: Path, local_project: Path) -> None:
    import bm_localmod

    captured = capture("x = p.x", {"p": bm_localmod.Point()}, tmp_path / "b.zip")
    assert "bm_localmod.py" in captured.manifest.sources


def test_nothing_is_shipped_when_no_local_module_is_used(tmp_path: Path, local_project: Path) -> None:
    import bm_localmod  # noqa: F401  (imported in this process, but not in the notebook)

    captured = capture("y = math.sqrt(x)", {"x": 4.0, "math": math}, tmp_path / "b.zip")
    assert captured.manifest.sources == []
    with BundleReader(captured.path)._zip as zf:
        assert not [n for n in zf.namelist() if n.startswith("src/")]


def test_installed_packages_are_never_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Even with the filesystem root as the "working directory", site-packages stays out.
    captured = capture("y = pd.DataFrame()", {"pd": pd}, tmp_path / "b.zip", root=Path("/"))
    assert not any("pandas" in s for s in captured.manifest.sources)


# --- errors ---


@pytest.mark.parametrize(
    ("make", "type_name"),
    [
        (threading.Lock, "_thread.lock"),
        (lambda: (i for i in range(3)), "generator"),
        (lambda: open(os.devnull, "w"), "_io.TextIOWrapper"),  # cloudpickle ships read-mode files
    ],
)
def test_unpicklable_value_is_named_and_leaves_no_bundle(tmp_path: Path, make: Any, type_name: str) -> None:
    value = make()
    path = tmp_path / "b.zip"
    try:
        with pytest.raises(CaptureError) as info:
            capture("y = ok + len(str(handle))", {"ok": 1, "handle": value}, path)
    finally:
        if hasattr(value, "close"):
            value.close()
    message = str(info.value)
    assert "`handle`" in message
    assert f"({type_name})" in message
    assert "cannot be pickled" in message
    assert "\n" not in message
    assert not path.exists()


def test_unpicklable_value_inside_a_container_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match=r"`state` \(dict\)"):
        capture("y = state", {"state": {"lock": threading.Lock()}}, tmp_path / "b.zip")
    assert list(tmp_path.iterdir()) == []


def test_undefined_name_warns_naming_it(tmp_path: Path) -> None:
    with pytest.warns(UndefinedNameWarning, match="`nowhere`") as record:
        capture("y = nowhere + len(z)\nz = 1", {}, tmp_path / "b.zip")
    names = [str(w.message) for w in record if issubclass(w.category, UndefinedNameWarning)]
    # builtins (len) and names the cell binds itself (z) are not "defined nowhere"
    assert len(names) == 1


def test_no_warning_for_defined_names_and_builtins(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedNameWarning)
        capture("y = max(len(a), 2)\nprint(y)", {"a": [1]}, tmp_path / "b.zip")


def test_outputs_must_be_assigned_by_the_cell(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="--out names missing") as info:
        capture("a = 1\nb = 2", {}, tmp_path / "b.zip", outputs=["a", "missing"])
    assert "a, b" in str(info.value)
    assert not (tmp_path / "b.zip").exists()


def test_outputs_limit_what_comes_back(tmp_path: Path) -> None:
    captured = capture("a = 1\nb = 2\nc = 3", {}, tmp_path / "b.zip", outputs=["c", "a", "c"])
    assert captured.outputs == ["c", "a"]
    assert captured.manifest.bound == ["a", "b", "c"]


@pytest.mark.parametrize("cell", ["", "   \n\t\n"])
def test_empty_cell(tmp_path: Path, cell: str) -> None:
    with pytest.raises(CaptureError, match="empty"):
        capture(cell, {}, tmp_path / "b.zip")
    assert not (tmp_path / "b.zip").exists()


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="syntax error at line 3") as info:
        capture("x = 1\ny = 2\nz = (3 +\n", {}, tmp_path / "b.zip")
    assert "nothing was submitted" in str(info.value)
    assert not (tmp_path / "b.zip").exists()


def test_star_import_message(tmp_path: Path) -> None:
    with pytest.raises(CaptureError) as info:
        capture("import os\nfrom math import *\ny = sqrt(2)", {}, tmp_path / "b.zip")
    message = str(info.value)
    assert message.startswith("line 2: 'from math import *' cannot be captured reliably")
    assert "from math import a, b" in message


# --- the manifest ---


def test_manifest_fields(tmp_path: Path) -> None:
    captured = capture("y = x\ndel x\nimport json", {"x": 1, "json": json}, tmp_path / "b.zip")
    reader = BundleReader(captured.path)
    reader.verify()
    manifest = reader.manifest
    assert manifest.format == FORMAT_VERSION
    assert manifest.python == platform.python_version()
    assert manifest.batchmagic == batchmagic.__version__
    assert len(manifest.sha256) == 64 and int(manifest.sha256, 16) >= 0
    assert manifest.bound == ["y", "json"]
    assert manifest.deleted == ["x"]
    assert manifest.outputs is None
    assert reader.cell() == "y = x\ndel x\nimport json"
    assert manifest == captured.manifest
