"""Runs complete through a faulty Batch service: the emulator's ``--faults`` resets connections before
and after answering, answers 5xx and 429 with Retry-After, and delays requests. Every call that creates
something is retried and idempotent: no task runs twice, no result or log line is lost or repeated."""

from __future__ import annotations

import re

import pytest

from batchmagic.api import Session
from batchmagic.emulator.faults import FaultPlan
from tests.support.emulator import start_emulator, wait_for
from tests.support.settings import use_azure

#: 15 % of requests faulted: resets before and after the answer, 503, 429 with Retry-After, delays.
FAULTS = "seed=7,reset-before:0.04,reset-after:0.04,503:0.03,429=1:0.02,delay=1:0.02"


def test_fault_spec_parses_and_refuses_in_one_line():
    plan = FaultPlan.parse("reset-after:0.5@POST/jobs/[^/]+/tasks,503=2:0.1,delay=1:0.1@/jobs")
    assert [r.kind for r in plan.rules] == ["reset-after", "503", "delay"]
    assert plan.rules[0].matches("POST", "/jobs/j/tasks") and not plan.rules[0].matches("GET", "/jobs/j/tasks")
    with pytest.raises(ValueError, match="is not KIND"):
        FaultPlan.parse("explode:0.1")


@pytest.fixture
def faulty(tmp_path, monkeypatch, home, azurite):
    with start_emulator(tmp_path / "batch", allocation_delay=0.2, extra_args=["--faults", FAULTS]) as emu:
        use_azure(monkeypatch, emu, azurite, prefix="faults")
        monkeypatch.setenv("BATCHMAGIC_BACKEND", "azure")
        yield emu
        clean = emu.client()
        wait_for(lambda: not list(clean.list_pools()), timeout=60)


def test_a_run_completes_through_faults(faulty, shell, capsys):
    shell.run_cell("n = 40")
    shell.run_cell("%%azbatch --name faulty\nfor i in range(n):\n    print('line', i)\ntotal = sum(range(n))")
    assert shell.user_ns["total"] == sum(range(40))
    run = shell.user_ns["_azbatch"]
    lines = [line for line in run.logs().splitlines() if line.startswith("line ")]
    assert lines == [f"line {i}" for i in range(40)]
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("line ")] == lines  # streamed once each
    tasks = [r for r in faulty.requests() if r["method"] == "POST" and r["path"] == f"/jobs/{run.id}/tasks"]
    assert tasks  # added (perhaps more than once, answered TaskExists): one task in the job
    assert [t.id for t in faulty.client().list_tasks(run.id)] == ["task-0"]


def test_a_200_task_sweep_completes_through_faults(faulty, tmp_path, capsys):
    ran = tmp_path / "ran.txt"
    session = Session()
    try:
        run = session.submit(
            f"open({str(ran)!r}, 'a').write(f'{{x}}\\n')\ny = x * 2",
            {},
            backend="azure",
            sweep=[{"x": i} for i in range(200)],
            nodes=2,
            slots_per_node=8,
            name="faulty-sweep",
        )
        results = run.wait(timeout=900)
    finally:
        session.teardown()
    assert list(results["state"]) == ["succeeded"] * 200
    assert [row["y"] for row in run.outputs] == [2 * i for i in range(200)]
    assert sorted(int(x) for x in ran.read_text().split()) == list(range(200))  # each task ran exactly once
    tasks = list(faulty.client().list_tasks(run.id))
    assert len(tasks) == 200 and all((t.execution_info.retry_count or 0) == 0 for t in tasks)
    injected = re.findall(r"injected fault (\S+) on (\S+)", faulty.log())
    handled = len(faulty.requests())
    print(f"faults injected: {len(injected)} of about {handled + len(injected)} requests", sorted(set(injected)))
    assert len(injected) >= 3  # about 15 % of some 50 requests


def test_runs_complete_through_a_proxy_that_resets_storage_connections(tmp_path, monkeypatch, home, azurite):
    """Blob Storage behind a loopback proxy that resets 10 % of requests (half before forwarding them, half
    after Azurite answered): the client's uploads and reads and the runner's appends are retried, and a
    retried append is not repeated: every line once, in order, and the right results."""
    from tests.support.azurite import ACCOUNT
    from tests.support.proxy import FaultyProxy

    with (
        # Batch's own download of the task's resource file (spec.json) is exempt: the service retries it
        # itself, the emulator does not (it fails the task with BlobDownloadMiscError).
        FaultyProxy(
            "127.0.0.1", azurite.port, reset_before=0.05, reset_after=0.05, seed=3, exempt=r"^GET \S*/spec\.json"
        ) as proxy,
        start_emulator(tmp_path / "batch", allocation_delay=0.2) as emu,
    ):
        use_azure(monkeypatch, emu, azurite, prefix="proxy")
        proxied = azurite.connection_string.replace(f":{azurite.port}/", f":{proxy.port}/")
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", proxied)
        # As many retries of each request, backing off a tenth as long: some twenty resets cost 2 s each with
        # the default's back-off (17s), 30 s of the test
        monkeypatch.setenv("BATCHMAGIC_STORAGE_PATIENCE", "2s")
        assert f"127.0.0.1:{proxy.port}/{ACCOUNT}" in proxied
        session = Session()
        try:
            run = session.submit(
                "for i in range(60):\n    print('line', i, flush=True)\ntotal = sum(range(60))", {}, backend="azure"
            )
            assert run.wait(timeout=300)["total"] == sum(range(60))
            lines = [line for line in run.logs().splitlines() if line.startswith("line ")]
            assert lines == [f"line {i}" for i in range(60)]
            sweep = session.submit("y = x + 1", {}, backend="azure", sweep=[{"x": i} for i in range(20)])
            table = sweep.wait(timeout=300)
            assert list(table["y"]) == [i + 1 for i in range(20)]
        finally:
            session.teardown()
        print("proxy:", proxy.counts)
        assert proxy.counts["reset-before"] + proxy.counts["reset-after"] >= 3
