"""The emulator is a product of its own inside the package (issue 16): it is written from the Batch REST
reference, so it imports nothing of the client but shared facts, and no client library of Batch.

Written in the style of tests/test_layout.py: architecture rules as tests, read from the source with ast.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import batchmagic.emulator

EMULATOR = Path(batchmagic.emulator.__file__).parent

#: Client modules that only hold facts both sides share (none today). A module listed here must itself
#: import nothing of the client, so that the emulator never follows the client's choices.
SHARED_FACTS: frozenset[str] = frozenset()

#: Third-party packages the emulator may use: ``docker`` (the docker executor). Not azure-batch, not
#: azure-storage: the emulator answers those clients, it does not use them.
THIRD_PARTY = {"docker"}


def _imports(path: Path, root: Path = EMULATOR.parent.parent) -> set[str]:
    """Every module ``path`` (under ``root``) imports, at any depth (lazy imports included), relative
    imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(root).parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                head = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(head + ([base] if base else []))
            found.add(base)
    return found


def test_the_emulator_imports_nothing_of_the_client() -> None:
    offenders = []
    for path in sorted(EMULATOR.rglob("*.py")):
        for name in _imports(path):
            if name.startswith("batchmagic") and not name.startswith("batchmagic.emulator"):
                if name not in SHARED_FACTS:
                    offenders.append(f"{path.relative_to(EMULATOR)} imports {name}")
    assert offenders == [], "the emulator imports only batchmagic.emulator and SHARED_FACTS"


def test_shared_facts_import_nothing_of_the_client() -> None:
    package = EMULATOR.parent
    for name in SHARED_FACTS:
        path = package.parent / (name.replace(".", "/") + ".py")
        imported = {m for m in _imports(path) if m.startswith("batchmagic")}
        assert imported <= SHARED_FACTS, f"{name} imports {imported - SHARED_FACTS}"


def test_the_emulator_uses_no_batch_or_storage_client() -> None:
    outside = set()
    for path in EMULATOR.rglob("*.py"):
        for name in _imports(path):
            top = name.split(".")[0]
            if top and top not in sys.stdlib_module_names and top not in {"__future__", "batchmagic"}:
                outside.add(top)
    assert outside <= THIRD_PARTY, outside - THIRD_PARTY


def test_the_rule_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    probe = tmp_path / "batchmagic" / "emulator" / "state" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("def _late() -> None:\n    from ...api import submit\n    import batchmagic.run\n")
    assert {"batchmagic.api", "batchmagic.run"} <= _imports(probe, tmp_path)
