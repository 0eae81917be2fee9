"""Read Blob Storage data from inside a cell: ``batchmagic.data.read_csv("az://container/path.csv")``.

Inside a run, the credentials are the run's own: for every ``az://`` path written literally in the
cell, the client signs a read SAS for that one blob and the runner installs it here before the cell
runs; never the user's keys. In the notebook itself (or for a path the run was not given), the
account of ``AZURE_STORAGE_CONNECTION_STRING`` is used. Downloads are parallel ranged requests.

Examples
--------
In [1]: %%azbatch
   ...: from batchmagic import data
   ...: df = data.read_csv("az://training/sets/v1/train.csv")
"""

from __future__ import annotations

import ast
import io
import re
from typing import IO, Any

__all__ = ["open", "read_bytes", "read_csv", "read_parquet", "grant", "az_paths"]

_AZ = re.compile(r"^az://([a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9]))/(.+)$")
_grants: dict[str, str] = {}  # az:// path -> read SAS URL, installed by the runner


def grant(grants: dict[str, str]) -> None:
    """Install read URLs for ``az://`` paths (the runner does this from the task's spec)."""
    _grants.update(grants)


def az_paths(source: str) -> list[str]:
    """The ``az://container/blob`` string literals of a cell, in order (what the client signs for)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _AZ.match(node.value)
    ]
    return list(dict.fromkeys(found))


def _url(path: str) -> str:
    match = _AZ.match(path)
    if not match:
        raise ValueError(f"{path!r} is not az://container/blob")
    if path in _grants:
        return _grants[path]
    from batchmagic.config import Settings

    # In the notebook itself there is no run to sign for it: the settings' own storage account.
    settings = Settings.from_env()
    connection = settings.secrets.storage_connection_string
    if not connection:
        raise PermissionError(
            f"no read access to {path}: inside a run, write the az:// path literally in the cell (or pass it "
            "with --input); in the notebook, export AZURE_STORAGE_CONNECTION_STRING"
        )
    from datetime import UTC, datetime, timedelta  # here: the runner imports this module for grant() only

    from batchmagic.storage import BlobStore

    signer = BlobStore.from_connection_string(connection, match.group(1), patience=settings.storage_patience)
    expiry = datetime.now(UTC) + timedelta(hours=1)
    return signer.blob_url_in(match.group(1), match.group(2), permissions="r", expiry=expiry)


def read_bytes(path: str, *, concurrency: int = 16) -> bytes:
    """The whole blob at ``az://container/blob``, fetched in parallel ranges."""
    import tempfile
    from pathlib import Path

    from batchmagic.storage import BlobChannel

    with tempfile.TemporaryDirectory(prefix="batchmagic-data-") as tmp:
        target = Path(tmp) / "blob"
        BlobChannel(_url(path)).download_to(target, concurrency=concurrency)
        return target.read_bytes()


def open(path: str, mode: str = "rb", *, encoding: str = "utf-8") -> IO[Any]:  # noqa: A001 - mirrors builtins.open
    """A read-only file object for ``az://container/blob`` (``"rb"`` or ``"r"``)."""
    if mode not in ("rb", "r"):
        raise ValueError("batchmagic.data.open reads only: mode 'rb' or 'r'")
    data = io.BytesIO(read_bytes(path))
    return data if mode == "rb" else io.TextIOWrapper(data, encoding=encoding)


def read_csv(path: str, **kwargs: Any) -> Any:
    """``pandas.read_csv`` of a blob."""
    import pandas as pd

    return pd.read_csv(open(path, "rb"), **kwargs)


def read_parquet(path: str, **kwargs: Any) -> Any:
    """``pandas.read_parquet`` of a blob."""
    import pandas as pd

    return pd.read_parquet(open(path, "rb"), **kwargs)
