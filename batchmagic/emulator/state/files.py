"""Where nodes and tasks keep their files on this machine (the file API serves them from here)."""

from __future__ import annotations

from pathlib import Path

from batchmagic.emulator.state.core import AccountCore

__all__ = ["FilesMixin"]


class FilesMixin(AccountCore):
    """Node and task directories: ``<workdir>/nodes/<node>/tasks/<job>/job-1/<task>``."""

    def node_root(self, node_id: str) -> Path:
        """The root directory of a node (``AZ_BATCH_NODE_ROOT_DIR``)."""
        return self.workdir / "nodes" / node_id

    def task_rel_dir(self, job_id: str, task_id: str) -> str:
        """A task's directory relative to its node's root."""
        return f"tasks/{job_id}/job-1/{task_id}"

    def task_dir(self, job_id: str, task_id: str) -> Path | None:
        """The directory of a task that has been scheduled, else None."""
        with self.lock:
            task = self._task(job_id, task_id)
            info = task.data.get("nodeInfo")
            if not info:
                return None
            return self.node_root(str(info["nodeId"])) / self.task_rel_dir(job_id, task_id)
