"""Every setting declared once (batchmagic/settings.py): the Settings object, the AzBatch traits and the
reference's table are derived from it, and every trait, variable and `%config AzBatch.x` of before stays."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from batchmagic.backends import BACKENDS
from batchmagic.config import Settings, parse_size, parse_timeout
from batchmagic.notebook.magics import AzBatch
from batchmagic.notebook.traits import trait_value
from batchmagic.notebook.widget import PANEL_MODES
from batchmagic.settings import BY_NAME, SETTINGS, render_reference

ROOT = Path(__file__).resolve().parents[1]

#: The traits and variables batchmagic had before the table: none may go.
TRAITS = {
    "backend", "home", "vm_size", "timeout", "batch_endpoint", "batch_account", "storage_account_url",
    "container", "image", "registry", "base_image", "pool", "node_image", "input_concurrency", "budget",
    "prices", "region", "master_port", "panel", "log_lines",
    "ship_limit", "bring_back_limit", "store_limit",  # the notebook's folder and the store (issue 17)
    "gpu_base_image", "shm_size",  # GPU runs (issue 19)
    "warm_worker",  # the local backend's warm worker (issue 17)
    "pip_extra_index_url",  # an index the image build uses besides PyPI (issue 18)
}  # fmt: skip
VARIABLES = {
    "BATCHMAGIC_BACKEND", "BATCHMAGIC_HOME", "AZURE_BATCH_ENDPOINT", "AZURE_BATCH_ACCOUNT",
    "AZURE_STORAGE_ACCOUNT_URL", "BATCHMAGIC_CONTAINER", "BATCHMAGIC_IMAGE", "BATCHMAGIC_REGISTRY",
    "BATCHMAGIC_BASE_IMAGE", "BATCHMAGIC_REGION", "BATCHMAGIC_PRICES", "BATCHMAGIC_POOL", "BATCHMAGIC_NODE_IMAGE",
    "BATCHMAGIC_MAX_TASKS", "BATCHMAGIC_MAX_NODES", "BATCHMAGIC_MASTER_PORT", "DOCKER_HOST",
    "BATCHMAGIC_SHIP_LIMIT", "BATCHMAGIC_BRING_BACK_LIMIT", "BATCHMAGIC_STORE_LIMIT",
    "BATCHMAGIC_GPU_BASE_IMAGE", "BATCHMAGIC_SHM_SIZE", "BATCHMAGIC_WARM_WORKER",
    "BATCHMAGIC_PIP_EXTRA_INDEX_URL",
    "BATCHMAGIC_STORAGE_PATIENCE",  # the Blob Storage client's back-off (tests wait out outages sooner)
}  # fmt: skip
#: Settings fields that are not settings a user sets: derived, or secrets (never traits).
NOT_SETTINGS = {"backend_chosen", "user", "secrets"}


def _sample(name: str, tmp_path: Path) -> tuple[str, Any]:
    """A value for ``name``'s variable, and what Settings and the trait then hold."""
    kind = BY_NAME[name].kind
    if kind == "backend":
        return "azure", "azure"
    if kind == "path":
        return str(tmp_path / "elsewhere"), tmp_path / "elsewhere"
    if kind in ("count", "port"):
        return "7001", 7001
    if kind == "duration":
        return "2m", 120.0
    if kind == "size":
        return "3MB", 3_000_000
    if kind == "choice":
        return BY_NAME[name].choices[-1], BY_NAME[name].choices[-1]
    return f"from-{name}", f"from-{name}"


def test_the_table_keeps_every_trait_and_variable_there_was() -> None:
    assert {s.name for s in SETTINGS if s.trait} == TRAITS
    assert {s.variable for s in SETTINGS if s.variable} == VARIABLES
    assert len(BY_NAME) == len(SETTINGS), "a setting declared twice"


def test_settings_fields_are_the_tables_with_its_defaults() -> None:
    declared = {f.name for f in fields(Settings)} - NOT_SETTINGS
    assert declared == {s.name for s in SETTINGS if s.in_settings}
    plain = Settings()
    for s in SETTINGS:
        if not s.in_settings:
            continue
        held = getattr(plain, s.name)
        if s.kind == "path":
            assert held == Path(str(s.default)).expanduser(), s.name
        elif s.kind == "duration":
            assert held == parse_timeout(str(s.default)), s.name
        elif s.kind == "money":
            assert held is None and s.default == "", s.name
        elif s.kind == "size":
            assert held == parse_size(str(s.default), s.name), s.name
        else:
            assert held == s.default, s.name


def test_the_traits_are_the_tables_with_their_help_choices_and_defaults(home: Path) -> None:
    traits = AzBatch.class_traits(config=True)
    assert set(traits) == TRAITS
    for name, trait in traits.items():
        s = BY_NAME[name]
        assert trait.help.startswith(s.help) and (s.variable in trait.help if s.variable else True), name
    assert tuple(BY_NAME["panel"].choices) == PANEL_MODES
    assert tuple(BY_NAME["backend"].choices) == BACKENDS


@pytest.mark.parametrize("name", sorted(s.name for s in SETTINGS if s.variable and s.in_settings))
def test_each_variable_seeds_settings_and_its_trait_and_config_overrides_it(
    name: str, shell: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s = BY_NAME[name]
    raw, value = _sample(name, tmp_path)
    monkeypatch.setenv(s.variable, raw)
    assert getattr(Settings.from_env(), name) == value
    if not s.trait:
        return
    magics = AzBatch(shell=shell)  # a fresh one: its defaults read the environment as it is now
    assert getattr(magics, name) == trait_value(s, value)
    assert getattr(magics.settings(), name) == value
    if s.kind == "size":
        shell.run_line_magic("config", f"AzBatch.{name} = '5MB'")
        assert getattr(shell.magics_manager.registry["AzBatch"].settings(), name) == 5_000_000
    elif s.kind == "choice":
        shell.run_line_magic("config", f"AzBatch.{name} = {s.choices[0]!r}")
        assert getattr(shell.magics_manager.registry["AzBatch"].settings(), name) == s.choices[0]
    elif s.kind not in ("backend", "path", "port"):
        shell.run_line_magic("config", f"AzBatch.{name} = 'from-config'")
        assert getattr(shell.magics_manager.registry["AzBatch"].settings(), name) == "from-config"


def test_the_reference_table_is_the_settings_table() -> None:
    page = ROOT / "docs" / "reference.md"
    text = page.read_text(encoding="utf-8")
    assert render_reference(text) == text, "docs/reference.md is stale: run `python -m batchmagic.settings --write`"
    for s in SETTINGS:
        assert (f"`AzBatch.{s.name}`" in text) == s.trait and (f"`{s.variable}`" in text or not s.variable)
