"""The package's shape: no import cycles, one reader of the environment, a contract of the standard
library only, and an API whose signature shows every option."""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import pytest

import batchmagic
from batchmagic.api import submit
from batchmagic.options import OPTION_NAMES, RunOptions
from batchmagic.protocol import Layout, TaskOutcome, TaskSpec

PACKAGE = Path(batchmagic.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str | None = None) -> set[str]:
    """batchmagic modules ``path`` (the module ``name``, by default its place in the package) imports, at
    any depth of the file (lazy imports included), except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = name or _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("batchmagic"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if base.startswith("batchmagic"):
                # `from package import module` is an edge to the module; `from module import name`, to it.
                modules = {f"{base}.{alias.name}" for alias in node.names if _is_module(f"{base}.{alias.name}")}
                found.update(modules)
                if len(modules) < len(node.names):
                    found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_cycles_in_the_package() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                walk(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)


def test_cycle_finder_sees_a_cycle(tmp_path: Path) -> None:
    """The walk above would catch a cycle hidden in a function body (a lazy import)."""
    source = "def f():\n    from batchmagic.api import Run\n"
    tree_imports = _imports_of_source(source, tmp_path)
    assert "batchmagic.api" in tree_imports


def test_cycle_finder_sees_the_package_root(tmp_path: Path) -> None:
    """``import batchmagic`` (for its version, say) is an edge to the root, whose ``__getattr__`` imports
    the API on first use: the walk sees both ends of that circle."""
    assert "batchmagic" in _imports_of_source("import batchmagic\nv = batchmagic.__version__\n", tmp_path)
    assert {"batchmagic.api", "batchmagic.errors"} <= _graph()["batchmagic"]  # the root's lazy imports


def _imports_of_source(source: str, tmp_path: Path) -> set[str]:
    # Outside the package: a test never writes into it (another test, or a kernel, may be importing it).
    path = tmp_path / "_probe_for_test.py"
    path.write_text(source)
    return _imports(path, "batchmagic._probe_for_test")


#: Modules that are not the client: the runner and the emulator are processes of their own; distributed.py's
#: helpers run in the cell, on a rank, and read what its backend set there.
_NOT_THE_CLIENT = ("runner/", "emulator/", "distributed.py")
#: config.py's readers of the environment, and the edges that may call them: where a process starts or a
#: user calls in (the extension, the Python API's Session, the command line, the magics, and data.py's
#: calls in the notebook, which have no session). Everything else is handed a Settings.
_CONFIG_READERS = (
    "Settings.from_env", "Secrets.from_env", "default_home", "default_backend", "adopt_emulator_settings",
    "environment",
)  # fmt: skip
_EDGES = ("__init__.py", "api.py", "cli.py", "notebook/magics.py", "data.py")


def _environment_readers(root: Path) -> list[str]:
    """Where modules under ``root`` read the environment other than through config.py, or call config's
    readers away from the edges."""
    readers = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative == "config.py" or relative.startswith(_NOT_THE_CLIENT):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            text = ast.unparse(node) if isinstance(node, ast.Attribute | ast.Call) else ""
            if text.startswith(("os.environ", "os.getenv", "os.putenv", "os.unsetenv")):
                readers.append(f"{relative}:{node.lineno}: {text}")
            elif isinstance(node, ast.ImportFrom) and node.module == "os":
                names = {a.name for a in node.names} & {"environ", "getenv", "putenv", "environb"}
                readers += [f"{relative}:{node.lineno}: from os import {n}" for n in sorted(names)]
            elif isinstance(node, ast.Call) and relative not in _EDGES:
                called = ast.unparse(node.func)
                if called in _CONFIG_READERS or called.endswith(tuple(f".{r}" for r in _CONFIG_READERS[2:])):
                    readers.append(f"{relative}:{node.lineno}: {called}() away from the edges")
    return readers


def test_only_config_reads_the_environment_and_only_the_edges_ask_it() -> None:
    assert _environment_readers(PACKAGE) == [], (
        "settings are read in config.py only, at the edges (batchmagic/settings.py declares them): "
        "hand a Settings down instead"
    )


def test_the_environment_rule_sees_each_way_of_reading_it(tmp_path: Path) -> None:
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "feature.py").write_text(
        "import os\nfrom os import environ\nfrom batchmagic.config import Settings, default_home\n"
        "a = os.environ.get('X')\nb = os.getenv('Y')\nc = Settings.from_env()\nd = default_home()\n"
    )
    (tmp_path / "cli.py").write_text("from batchmagic.config import Settings\ns = Settings.from_env()\n")
    found = {line.split(": ", 1)[1] for line in _environment_readers(tmp_path)}
    assert {
        "from os import environ",
        "os.environ.get('X')",
        "os.getenv('Y')",
        "Settings.from_env() away from the edges",
        "default_home() away from the edges",
    } <= found, found
    assert not any(line.startswith("cli.py") for line in _environment_readers(tmp_path))  # an edge


def test_protocol_needs_only_the_standard_library() -> None:
    imported = {m.split(".")[0] for m in _all_imports(PACKAGE / "protocol.py")}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def _all_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_submit_shows_every_option_in_its_signature() -> None:
    parameters = inspect.signature(submit).parameters
    assert set(OPTION_NAMES) <= set(parameters), set(OPTION_NAMES) - set(parameters)
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def test_spec_and_outcome_round_trip() -> None:
    spec = TaskSpec("r", "t", "file:///b", "file:///l", "file:///r", params={"a": "00"}, grants={"az://c/x": "u"})
    assert TaskSpec.from_json(spec.to_json()) == spec
    outcome = TaskOutcome(ok=True, outputs={"y": b"\x80"}, deleted=("z",), files=(("m.pt", 3),))
    assert TaskOutcome.from_bytes(outcome.to_bytes()) == outcome


def test_every_store_key_comes_from_the_layout() -> None:
    """No module spells a run store key itself: ``runs/``, ``objects/sha256`` and ``inputs/sha256``
    appear in protocol.py only (docstrings aside)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative == "protocol.py" or relative.startswith("emulator/"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if node.value.startswith(("runs/", "objects/sha256", "inputs/sha256")):
                    offenders.append(f"{relative}:{node.lineno}: {node.value!r}")
    assert offenders == []
    assert Layout.spec("r", "t") == "runs/r/t/spec.json"


def test_options_are_checked_once_on_construction() -> None:
    from batchmagic.errors import ConfigError

    with pytest.raises(ConfigError, match="--nodes must be at least 1"):
        RunOptions(nodes=0)
    with pytest.raises(ConfigError, match="not a Python name"):
        RunOptions(outputs=("class",))
    assert RunOptions(timeout="30m").timeout == 1800


# Who may import a heavy or front-end dependency (the emulator is a process of its own, not the client).
OWNERS = {
    # The notebook's front end; IPython's input transformers, which read a cell's syntax (%time, !cmd) as the
    # kernel does; and the runner's minimal shell that runs such a cell.
    "IPython": ("notebook/", "package/ipysyntax.py", "runner/ipyshell.py"),
    "ipywidgets": ("notebook/",),
    "ipykernel": ("notebook/",),
    "jupyter_ui_poll": ("notebook/",),
    "azure.batch": ("backends/azure/",),
}


def test_only_the_owning_folder_imports_a_dependency() -> None:
    """The folder listing says where a dependency is used: the notebook's front end in notebook/,
    the Batch SDK in backends/azure/."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("emulator/"):
            continue
        for name in _all_imports(path):
            for dependency, owners in OWNERS.items():
                if (name == dependency or name.startswith(dependency + ".")) and not relative.startswith(owners):
                    offenders.append(f"{relative}: {name}")
    assert offenders == []


def test_the_emulator_imports_nothing_of_the_client() -> None:
    """The Batch emulator is a product of its own: it answers as the service does, from its own rules."""
    graph = _graph()
    leaks = {
        f"{name} -> {dep}"
        for name, deps in graph.items()
        if name.startswith("batchmagic.emulator")
        for dep in deps
        if not dep.startswith("batchmagic.emulator")
    }
    assert leaks == set()


#: The longest a client function's body may be (its docstring aside): longer ones do several things.
MAX_BODY_LINES = 60


def test_no_client_function_is_over_sixty_lines() -> None:
    """Every function of the client (the emulator is a product of its own) fits in a screen."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("emulator/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and len(body) > 1:
                body = body[1:]
            lines = (node.end_lineno or node.lineno) - body[0].lineno + 1
            if lines > MAX_BODY_LINES:
                long.append(f"{relative}:{node.lineno} {node.name}: {lines} lines")
    assert long == []
