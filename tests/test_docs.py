"""The documentation site (mkdocs.yml, docs/) builds strict, a broken link fails that build, and README's links
lead to files that exist."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "--site-dir", str(site)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def test_the_site_builds_strict(tmp_path: Path) -> None:
    built = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "site" / "index.html").exists()
    for page in ("getting-started", "azure", "warm-pools", "images", "data", "sweeps", "cli", "reference"):
        assert (tmp_path / "site" / page / "index.html").exists(), page
    assert (tmp_path / "site" / "panel-running.png").exists()


def test_a_broken_link_or_anchor_fails_the_strict_build(tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    page = copy / "docs" / "getting-started.md"
    original = page.read_text(encoding="utf-8")
    page.write_text(original + "\nSee [nowhere](no-such-page.md).\n", encoding="utf-8")
    broken_page = _build(copy / "mkdocs.yml", tmp_path / "a")
    assert broken_page.returncode != 0
    assert "no-such-page.md" in broken_page.stderr
    page.write_text(original + "\nSee [nowhere](azure.md#no-such-section).\n", encoding="utf-8")
    broken_anchor = _build(copy / "mkdocs.yml", tmp_path / "b")
    assert broken_anchor.returncode != 0
    assert "no-such-section" in broken_anchor.stderr


def test_readme_links_lead_to_files_that_exist() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = [t for t in _LINK.findall(text) if "://" not in t]
    assert any(t.startswith("docs/") for t in targets)
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"
