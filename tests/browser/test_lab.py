"""batchmagic as a person sees it: JupyterLab in a real browser (Playwright driving Debian's chromium).

One notebook, run cell by cell in JupyterLab on the local backend: a blocking cell that prints for ~8 s
(the panel renders, its phase moves, lines arrive before the cell ends, it ends done); a blocking cell
cancelled with the panel's button (it ends cancelled, and its names are not written); a ``--no-wait`` run
while another cell executes; a sweep with a failing task (the grid fills, clicking a square shows that
task's log before the sweep ends, the failure colours it amber with the count). Then the notebook is
saved, its kernel shut down, and the notebook reopened: every run's static record is still there. The
browser's console shows no error throughout. Screenshots (a run mid-way, a sweep with a task picked, a
finished sweep's record) go to docs/ for README.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import nbformat
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CHROMIUM = os.environ.get("BATCHMAGIC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

LIVE = """%%azbatch --name live --vm Standard_E32_v3
import time
for i in range(16):
    print("line", i, flush=True)
    time.sleep(0.5)
answer = 42"""
CANCEL = """%%azbatch --name stopme
import time
for i in range(120):
    print("tick", i, flush=True)
    time.sleep(0.5)
left = 1"""
BACKGROUND = """%%azbatch --no-wait --name bg
import time
for i in range(8):
    print("bg", i, flush=True)
    time.sleep(0.5)
bg_value = 7"""
FOREGROUND = """import time
for i in range(16):
    print("fg", i, flush=True)
    time.sleep(0.5)"""
SWEEP = """%%azbatch --sweep i=0,1,2,3,4,5 --slots-per-node 2 --name grid
import time
for k in range(6 if i < 4 else 12):  # the last two run long: task 3's failure is seen while they run
    print("task", i, "step", k, flush=True)
    time.sleep(0.5)
if i == 3:
    raise ValueError("i is 3")
score = i * 10"""
CELLS = [
    "%load_ext batchmagic",
    LIVE,
    CANCEL,
    "print('left' in globals(), answer)",
    BACKGROUND,
    FOREGROUND,
    SWEEP,
]
RUN_CELLS = {"live": 1, "stopme": 2, "bg": 4, "grid": 6}


def _need(condition: bool, reason: str) -> None:
    """A missing browser part skips the test on a workstation, and fails it in CI (CI=1 installs it all)."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Lab:
    def __init__(self, url: str, token: str, root: Path, process: subprocess.Popen[bytes]) -> None:
        self.url, self.token, self.root, self.process = url, token, root, process

    def api(self, method: str, path: str) -> Any:
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    _need(
        shutil.which(CHROMIUM) is not None or Path(CHROMIUM).exists(),
        f"{CHROMIUM} is missing: apt-get install chromium",
    )
    try:
        import jupyterlab  # noqa: F401
        import playwright  # noqa: F401
    except ImportError as err:
        _need(False, f"{err.name} is missing: pip install -e '.[test]'")
    root = tmp_path / "notebooks"
    root.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "runs.ipynb")
    token = secrets.token_hex(16)
    port = _free_port()
    env = {
        **os.environ,
        "BATCHMAGIC_HOME": str(tmp_path / "bmhome"),
        "BATCHMAGIC_BACKEND": "local",
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"),
    }
    for var in ("AZURE_BATCH_ENDPOINT", "AZURE_BATCH_ACCOUNT", "AZURE_BATCH_ACCESS_KEY"):
        env.pop(var, None)
    # Lab's news and update checks would reach out to the internet: off, so the console stays clean.
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"checkForUpdates": False, "fetchNews": "false"})
    )
    argv = [
        sys.executable, "-m", "jupyterlab", "--allow-root", "--no-browser", f"--ServerApp.token={token}",
        f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={root}",
        "--ServerApp.port_retries=0", "--LabApp.news_url=None",
    ]  # fmt: skip
    log = open(tmp_path / "lab.log", "wb")
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    lab = Lab(f"http://127.0.0.1:{port}", token, root, process)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                lab.api("GET", "/api/status")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start: {(tmp_path / 'lab.log').read_text()}") from None
                time.sleep(0.5)
        yield lab
    finally:
        try:
            for kernel in lab.api("GET", "/api/kernels"):
                lab.api("DELETE", f"/api/kernels/{kernel['id']}")
        except OSError:
            pass
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _eventually(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def test_runs_in_jupyterlab(lab: Lab) -> None:
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on(
                "console",
                lambda m: (
                    errors.append(f"console: {m.text} ({m.location.get('url', '')})") if m.type == "error" else None
                ),
            )
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            try:
                _drive(page, lab)
            except BaseException:
                page.screenshot(path=str(lab.root.parent / "failure.png"))  # for whoever reads the failure
                print(f"screenshot of the failure: {lab.root.parent / 'failure.png'}")
                raise
        finally:
            browser.close()
    assert not errors, "\n".join(errors)


def _console(errors: list[str], message: Any) -> None:
    if message.type == "error":
        errors.append(f"console: {message.text} ({message.location.get('url', '')})")


def _open(page: Any, lab: Lab) -> None:
    page.goto(f"{lab.url}/lab/tree/runs.ipynb?token={lab.token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    status = page.locator(".jp-StatusBar-TextItem:has-text('Python 3 (ipykernel) | Idle')")
    _eventually(lambda: status.count() > 0, 60, "an idle kernel")


def _cell(page: Any, index: int) -> Any:
    return page.locator(".jp-Notebook .jp-Cell").nth(index)


def _run(page: Any, index: int) -> None:
    """Run one cell as a person would: click into it, Shift+Enter."""
    cell = _cell(page, index)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")


def _busy(page: Any, index: int) -> bool:
    prompt = _cell(page, index).locator(".jp-InputArea-prompt").inner_text()
    return "*" in prompt


def _output_text(page: Any, index: int) -> str:
    return str(_cell(page, index).locator(".jp-OutputArea").first.inner_text())


def _drive(page: Any, lab: Lab) -> None:
    DOCS.mkdir(exist_ok=True)
    _open(page, lab)
    _run(page, 0)
    _eventually(lambda: _cell(page, 0).locator(".jp-InputArea-prompt").inner_text().strip() == "[1]:", 60,
                "%load_ext")  # fmt: skip

    # 1. A blocking cell printing for ~8 s: the panel renders, its phase moves, lines arrive before the end.
    _run(page, 1)
    live = _cell(page, 1)
    _eventually(lambda: live.locator(".azbatch-panel").count() > 0, 30, "the live panel")
    phases = set()

    def line_arrived() -> bool:
        phase = live.locator(".azbatch-panel .azbatch-phase")
        if phase.count():
            phases.add(phase.first.inner_text())
        return "line 3" in _output_text(page, 1)

    _eventually(line_arrived, 60, "line 3 while the cell runs")
    assert _busy(page, 1), "the lines arrived only after the cell ended"
    live.screenshot(path=str(DOCS / "panel-running.png"))
    _eventually(lambda: not _busy(page, 1), 60, "the live cell to end")
    record = live.locator(".azbatch-record")
    _eventually(lambda: record.count() > 0, 30, "the live run's record")
    assert record.locator(".azbatch-phase").inner_text() == "done"
    assert "running" in phases, phases
    assert "line 15" in _output_text(page, 1) and "Standard_E32_v3" in record.inner_text()

    # 2. Cancel with the button while the cell blocks: "cancelling" at once, ends cancelled, no names written.
    _run(page, 2)
    stop = _cell(page, 2)
    _eventually(lambda: "tick 2" in _output_text(page, 2), 60, "tick 2")
    clicked = time.monotonic()
    stop.locator(".azbatch-panel button:has-text('Cancel')").click()
    _eventually(lambda: stop.locator(".azbatch-panel button:has-text('Cancelling')").count()
                or stop.locator(".azbatch-record").count(), 5, "Cancelling on the button")  # fmt: skip
    _eventually(lambda: not _busy(page, 2), 30, "the cancelled cell to end")
    assert time.monotonic() - clicked < 15
    _eventually(lambda: stop.locator(".azbatch-record").count() > 0, 10, "the cancelled run's record")
    assert stop.locator(".azbatch-record .azbatch-phase").inner_text() == "cancelled"
    assert "RunCancelled" in _output_text(page, 2) and "tick 100" not in _output_text(page, 2)
    _run(page, 3)
    _eventually(lambda: "False 42" in _output_text(page, 3), 30, "the names the cancelled cell did not write")

    # 3. A --no-wait run while another cell executes: both make progress at once.
    _run(page, 4)
    _eventually(lambda: not _busy(page, 4), 30, "--no-wait to return")
    _run(page, 5)
    background = _cell(page, 4)
    _eventually(lambda: "fg 1" in _output_text(page, 5), 30, "the foreground cell's lines")
    _eventually(lambda: "bg 2" in _output_text(page, 4), 30, "the background run's lines in its panel")
    assert _busy(page, 5), "the background run's lines waited for the foreground cell"
    _eventually(lambda: background.locator(".azbatch-record").count() > 0, 60, "the background run's record")
    assert background.locator(".azbatch-record .azbatch-phase").inner_text() == "done"
    assert "bg 7" in background.locator(".azbatch-record").inner_text()
    _eventually(lambda: not _busy(page, 5), 30, "the foreground cell to end")

    # 4. A sweep with a failing task: the grid fills; a click on a square shows that task's log live.
    _run(page, 6)
    sweep = _cell(page, 6)
    squares = sweep.locator(".azbatch-square")
    _eventually(lambda: squares.count() == 6, 30, "six squares")
    _eventually(lambda: "running" in (squares.nth(0).get_attribute("title") or ""), 30, "task 0 running")
    squares.nth(0).click()
    _eventually(lambda: "task 0 step" in sweep.locator(".azbatch-panel .jp-OutputArea").inner_text(), 20,
                "task 0's log in the panel")  # fmt: skip
    assert _busy(page, 6)
    _eventually(lambda: "failed" in (squares.nth(3).get_attribute("title") or ""), 60, "task 3 to fail")
    squares.nth(3).click()
    _eventually(lambda: "ValueError: i is 3" in sweep.locator(".azbatch-panel .jp-OutputArea").inner_text(), 20,
                "task 3's traceback")  # fmt: skip
    still_running = _busy(page, 6)
    sweep.screenshot(path=str(DOCS / "sweep-live.png"))
    _eventually(lambda: not _busy(page, 6), 60, "the sweep to end")
    record = sweep.locator(".azbatch-record")
    _eventually(lambda: record.count() > 0, 30, "the sweep's record")
    phase = record.locator(".azbatch-phase")
    assert phase.inner_text() == "done, 1 of 6 failed"
    assert phase.evaluate("e => getComputedStyle(e).color") == "rgb(230, 81, 0)"  # amber
    assert "ValueError: i is 3" in record.inner_text()
    record.screenshot(path=str(DOCS / "sweep-finished.png"))
    assert still_running, "task 3's traceback showed only after the sweep ended"

    # 5. Save, shut the kernel down, reopen: every run's record is there, with no kernel and no widget state.
    page.keyboard.press("Control+s")
    _eventually(lambda: _saved_records(lab) == set(RUN_CELLS), 30, "the saved notebook to hold every record")
    for kernel in lab.api("GET", "/api/kernels"):
        lab.api("DELETE", f"/api/kernels/{kernel['id']}")
    for session in lab.api("GET", "/api/sessions"):
        lab.api("DELETE", f"/api/sessions/{session['id']}")
    page.reload()
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    for name, index in RUN_CELLS.items():
        record = _cell(page, index).locator(".azbatch-record")
        _eventually(partial(_shows, record), 30, f"{name}'s record after reopening")
        assert name in record.first.inner_text()
    assert page.locator("text=Error displaying widget").count() == 0


def _shows(locator: Any) -> bool:
    return bool(locator.count() > 0 and locator.first.is_visible())


def _saved_records(lab: Lab) -> set[str]:
    nb = nbformat.read(lab.root / "runs.ipynb", as_version=4)
    found = set()
    for name, index in RUN_CELLS.items():
        for output in nb.cells[index].get("outputs", []):
            page = output.get("data", {}).get("text/html", "")
            if "azbatch-record" in page and name in page:
                found.add(name)
    return found
