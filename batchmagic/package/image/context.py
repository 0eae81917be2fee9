"""The build context of a training image: ``container/Dockerfile``, the spec's ``requirements.txt``
and a wheel of this process's own copy of batchmagic. Files only: no engine, no network.
"""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path

from batchmagic._version import __version__
from batchmagic.errors import ConfigError
from batchmagic.package.environment import EnvironmentSpec

__all__ = ["build_context", "build_wheel"]

_PACKAGE = Path(__file__).resolve().parents[2]  # batchmagic/, this copy of it


def _dockerfile() -> str:
    """container/Dockerfile: from the source checkout, else where the wheel installs it (data-files)."""
    for candidate in (
        _PACKAGE.parent / "container" / "Dockerfile",
        Path(sys.prefix) / "share" / "batchmagic" / "Dockerfile",
    ):
        if candidate.exists():
            return candidate.read_text()
    raise ConfigError("batchmagic's container/Dockerfile is missing from this installation: reinstall batchmagic")


def build_wheel(dest: Path) -> Path:
    """A wheel of this process's own copy of batchmagic (same version, same sources), built without
    touching an index: the runner in the image is exactly the code that packaged the cell."""
    package = _PACKAGE
    version = __version__
    dist_info = f"batchmagic-{version}.dist-info"
    files: dict[str, bytes] = {}
    for path in sorted(package.rglob("*.py")):
        if "__pycache__" not in path.parts:
            files[f"batchmagic/{path.relative_to(package).as_posix()}"] = path.read_bytes()
    files[f"{dist_info}/METADATA"] = (
        "Metadata-Version: 2.1\nName: batchmagic\n"
        f"Version: {version}\nSummary: The batchmagic runner (training image copy).\n"
        "Requires-Python: >=3.11\nProvides-Extra: runner\n"
        'Requires-Dist: cloudpickle>=3.0; extra == "runner"\n'
        'Requires-Dist: azure-storage-blob<13,>=12.20; extra == "runner"\n'
    ).encode()
    files[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: batchmagic\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    for name, data in files.items():
        # RECORD's own form: urlsafe base64 of the digest, unpadded (PEP 376 / the wheel spec)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"batchmagic-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))  # fixed: the wheel is reproducible
            info.external_attr = 0o644 << 16
            archive.writestr(info, data, zipfile.ZIP_DEFLATED)
    return wheel


def build_context(spec: EnvironmentSpec, directory: Path) -> Path:
    """Write the build context (Dockerfile, requirements.txt, wheels/) for ``spec`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text(_dockerfile())
    (directory / "requirements.txt").write_text(spec.requirements_txt())
    build_wheel(directory / "wheels")
    return directory
