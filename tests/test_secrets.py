"""Secrets stay where they belong: the Batch key, the storage key, the registry password and ``--env``
values appear in no request the Batch emulator recorded, no ledger line, no panel text and no log.
``--env`` values travel in the task's spec blob only (readable through the task's SAS)."""

from __future__ import annotations

import hashlib
import json

from tests.support.azurite import KEY as STORAGE_KEY
from tests.support.emulator import start_emulator
from tests.support.settings import use_azure

API_KEY = "api-key-value-7c1e9b"
DB_PASSWORD = "db-password-value-40aa2"
REGISTRY_PASSWORD = "registry-password-value-93f1"


def test_secrets_stay_out_of_requests_ledger_panel_and_logs(shell, home, tmp_path, monkeypatch, azurite, capsys):
    with start_emulator(tmp_path / "batch", allocation_delay=0.2) as emu:
        container = use_azure(monkeypatch, emu, azurite, prefix="secret")
        monkeypatch.setenv("BATCHMAGIC_BACKEND", "azure")
        monkeypatch.setenv("BATCHMAGIC_REGISTRY_USERNAME", "trainer")
        monkeypatch.setenv("BATCHMAGIC_REGISTRY_PASSWORD", REGISTRY_PASSWORD)
        shell.run_cell(
            f"%%azbatch --env MY_API_KEY={API_KEY} --env DB_PASSWORD={DB_PASSWORD} --env MODE=fast\n"
            "import hashlib, os\n"
            "digest = hashlib.sha256((os.environ['MY_API_KEY'] + os.environ['DB_PASSWORD']).encode()).hexdigest()\n"
            "mode = os.environ['MODE']\n"
            "print('the cell ran with', mode)\n"
        )
        assert shell.user_ns["digest"] == hashlib.sha256((API_KEY + DB_PASSWORD).encode()).hexdigest()
        assert shell.user_ns["mode"] == "fast"
        run = shell.user_ns["_azbatch"]
        out, err = capsys.readouterr()
        secrets = {
            "batch key": emu.key,
            "storage key": STORAGE_KEY,
            "registry password": REGISTRY_PASSWORD,
            "--env MY_API_KEY": API_KEY,
            "--env DB_PASSWORD": DB_PASSWORD,
        }
        blobs = azurite.service().get_container_client(container)
        spec = blobs.download_blob(f"runs/{run.id}/task-0/spec.json").readall()
        assert json.loads(spec)["env"] == {"MY_API_KEY": API_KEY, "DB_PASSWORD": DB_PASSWORD, "MODE": "fast"}
        places = {
            "the emulator's record": emu.record_path.read_text(),
            "the emulator's log": emu.log(),
            "the ledger": "".join(p.read_text() for p in home.glob("ledger*") if p.is_file()),
            "the panel": out + err + repr(run.state()) + repr(run),
            "the run's log": run.logs(),
            "the task's log blob": blobs.download_blob(f"runs/{run.id}/task-0/output.log").readall().decode(),
        }
        for where, text in places.items():
            for what, secret in secrets.items():
                assert secret not in text, f"the {what} is in {where}"
        tasks = [r for r in emu.requests() if r["method"] == "POST" and r["path"] == f"/jobs/{run.id}/tasks"]
        assert tasks and "environmentSettings" not in tasks[0]["body"]
        ledger = (home / "ledger.jsonl").read_text()
        assert '"MY_API_KEY": "<redacted>"' in ledger and '"MODE": "fast"' in ledger
        shell.run_line_magic("azbatch_teardown", "")  # while Batch is there to answer (the fixture's comes after)
