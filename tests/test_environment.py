"""The environment spec, its hash and tag, requirement parsing, the version guard, and the one-line
errors that need no Docker engine (see tests/test_image.py for the real engine and registry)."""

from __future__ import annotations

import importlib.metadata as md
import json
import sys
import time
from pathlib import Path

import cloudpickle
import pandas as pd
import pytest
from IPython.core.error import UsageError

from batchmagic.errors import ConfigError
from batchmagic.package import environment
from batchmagic.package.environment import (
    LABEL,
    EnvironmentSpec,
    check_compatible,
    environment_spec,
    parse_pip,
    pickled_modules,
    read_requirements,
    split_registry,
)
from batchmagic.package.image import build_wheel, plan_image, split_image

PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def test_spec_pins_the_distributions_behind_imported_modules():
    spec = environment_spec(["tabulate", "os", "json", "batchmagic", "__main__"], base_image="base:1")
    pins = spec.pins
    assert pins["tabulate"] == md.version("tabulate")
    assert pins["cloudpickle"] == md.version("cloudpickle")  # the runner's own needs, always
    assert "batchmagic" not in pins and not any(r.startswith(("os", "json")) for r in spec.requirements)
    assert spec.python == PY and spec.base_image == "base:1"
    assert spec.batchmagic.startswith("0.1.0+")


def test_module_to_distribution_uses_packages_distributions():
    # `zmq` is provided by the pyzmq distribution: the module name is not the distribution name.
    pinned, local = environment.distributions_for(["zmq", "dateutil"])
    assert pinned.get("pyzmq") == md.version("pyzmq")
    assert pinned.get("python-dateutil") == md.version("python-dateutil")
    assert local == []


def test_editable_distributions_are_shipped_as_source_not_pinned(monkeypatch):
    monkeypatch.setattr(environment, "_module_distributions", lambda: {"mylib": ["batchmagic-test-local"]})

    class Local:
        metadata = {"Name": "mylib-dist"}
        version = "0.0.1"

        def read_text(self, name):
            return json.dumps({"url": "file:///home/me/mylib", "dir_info": {"editable": True}})

    monkeypatch.setattr(environment.md, "distribution", lambda name: Local())
    pinned, local = environment.distributions_for(["mylib"])
    assert pinned == {} and local == ["mylib-dist"]


def test_same_environment_same_tag_and_a_version_change_a_new_tag(monkeypatch):
    first = environment_spec(["tabulate"], base_image="base:1")
    again = environment_spec(["tabulate"], base_image="base:1")
    assert first == again and first.tag("127.0.0.1:5000/bm") == again.tag("127.0.0.1:5000/bm")
    assert first.tag("127.0.0.1:5000/bm") == f"127.0.0.1:5000/bm:env-{first.hash}" and len(first.hash) == 12

    real = environment.distributions_for
    monkeypatch.setattr(
        environment,
        "distributions_for",
        lambda modules: ({**real(modules)[0], "tabulate": "0.0.1"}, []),
    )
    bumped = environment_spec(["tabulate"], base_image="base:1")
    assert "tabulate==0.0.1" in bumped.requirements
    assert bumped.hash != first.hash
    assert environment_spec(["tabulate"], base_image="base:2").hash != first.hash
    assert environment_spec(["tabulate"], base_image="base:1", pip=["rich==13.0"]).hash != first.hash


def test_spec_round_trips_through_its_label():
    spec = environment_spec(["tabulate"], pip=["rich>=13"])
    assert EnvironmentSpec.from_json(spec.to_json()) == spec
    assert "rich>=13" in spec.requirements


def test_requirements_and_pip_parsing(tmp_path: Path):
    good = tmp_path / "requirements.txt"
    good.write_text("# pinned\ntabulate==0.9.0\n\nrich>=13,<14  # comment\nattrs[tests]==23.1\n")
    assert read_requirements(good) == ["tabulate==0.9.0", "rich>=13,<14", "attrs[tests]==23.1"]
    assert parse_pip(["tabulate==0.9.0"]) == ["tabulate==0.9.0"]
    with pytest.raises(ConfigError, match=r"^--requirements .*/missing.txt: no such file$"):
        read_requirements(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("tabulate==0.9.0\n-e ./somewhere\n")
    with pytest.raises(ConfigError, match=r"line 2: '-e ./somewhere' is not a requirement"):
        read_requirements(bad)
    with pytest.raises(ConfigError, match=r"--pip: 'tabulate = = 1' is not a requirement"):
        parse_pip(["tabulate = = 1"])


def test_registry_and_image_names():
    assert split_registry("127.0.0.1:5000/batchmagic") == ("127.0.0.1:5000", "batchmagic")
    assert split_registry("myreg.azurecr.io") == ("myreg.azurecr.io", "batchmagic")
    assert split_registry("") == ("", "batchmagic")
    with pytest.raises(ConfigError, match="does not start with a registry host"):
        split_registry("batchmagic/images")
    assert split_image("127.0.0.1:5000/bm/train:env-1") == ("127.0.0.1:5000", "bm/train", "env-1")
    assert split_image("python:3.11-slim") == ("", "python", "3.11-slim")


def test_pickled_modules_are_what_unpickling_imports():
    df = pd.DataFrame({"x": [1, 2]})
    assert "pandas" in pickled_modules(cloudpickle.dumps({"a": df, "b": df}, protocol=5))
    assert pickled_modules(cloudpickle.dumps([1, "x"], protocol=5)) <= {"builtins"}


def _labels(python: str = PY, **pins: str) -> dict[str, str]:
    spec = EnvironmentSpec(
        python=python,
        base_image="base",
        batchmagic="0.1.0",
        requirements=tuple(f"{name}=={version}" for name, version in pins.items()),
    )
    return {LABEL: spec.to_json()}


def test_guard_names_each_mismatch_with_both_versions():
    ok = _labels(cloudpickle=md.version("cloudpickle"), pandas=md.version("pandas"))
    check_compatible("img", ok, ["pandas"])
    check_compatible("img", {}, ["pandas"])  # an image without our labels: nothing to compare

    with pytest.raises(ConfigError) as err:
        check_compatible("img:1", _labels("3.9", cloudpickle="2.0.0", pandas="1.5.3"), ["pandas"])
    message = str(err.value)
    assert "\n" not in message
    assert f"Python {PY} in the kernel, 3.9 in the image" in message
    assert f"pandas {md.version('pandas')} in the kernel, 1.5.3 in the image" in message
    assert f"cloudpickle {md.version('cloudpickle')} in the kernel, 2.0.0 in the image" in message

    with pytest.raises(ConfigError, match=r"tabulate [\d.]+ in the kernel, not in the image"):
        check_compatible("img", _labels(cloudpickle=md.version("cloudpickle")), ["tabulate"])


def test_plan_image_rejects_flags_that_do_not_apply(tmp_path: Path):
    with pytest.raises(ConfigError, match="--container is for --backend local"):
        plan_image("azure", container=True)
    with pytest.raises(ConfigError, match="need a registry"):
        plan_image("azure", pip=["tabulate"], registry="")
    with pytest.raises(ConfigError, match="add --container"):
        plan_image("local", pip=["tabulate"])
    assert plan_image("local") is None
    configured = plan_image("azure", configured_image="x/y:1", registry="")
    assert configured is not None and configured.given == "x/y:1" and configured.configured  # guarded too
    request = plan_image("azure", registry="127.0.0.1:5000/bm", base_image="base:1")
    assert request is not None and request.push and request.base_image == "base:1"


def test_wheel_is_this_copy_of_batchmagic(tmp_path: Path):
    import zipfile

    wheel = build_wheel(tmp_path)
    assert wheel.name == "batchmagic-0.1.0-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert "batchmagic/runner/main.py" in names and "batchmagic-0.1.0.dist-info/RECORD" in names
    assert build_wheel(tmp_path / "again").read_bytes() == wheel.read_bytes()  # reproducible


def test_dockerfile_has_no_secrets_and_a_non_root_user():
    path = Path(__file__).resolve().parents[1] / "container" / "Dockerfile"
    text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    assert "ARG BASE_IMAGE=python:3.11-slim" in text and "USER batchmagic" in text
    assert not any(word in text.upper() for word in ("KEY=", "PASSWORD", "SECRET", "TOKEN", "CONNECTION_STRING"))


# --- one-line errors through the magics, no engine needed ---


def test_no_engine_is_one_line_fast(shell, monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    monkeypatch.delenv("BATCHMAGIC_REGISTRY", raising=False)
    started = time.monotonic()
    with pytest.raises(UsageError) as err:
        shell.run_cell("%%azbatch --backend local --container\nx = 1")
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert "\n" not in message and "no Docker engine is reachable" in message
    assert "start Docker" in message and "--image" in message
    assert "x" not in shell.user_ns


def test_missing_or_unparsable_requirements_are_one_line(shell, tmp_path):
    with pytest.raises(UsageError, match=r"^--requirements nope.txt: no such file$"):
        shell.run_cell("%%azbatch --backend local --container --requirements nope.txt\nx = 1")
    (Path.cwd() / "bad.txt").write_text("tabulate ==== 1\n")
    with pytest.raises(UsageError, match=r"line 1: 'tabulate ==== 1' is not a requirement"):
        shell.run_cell("%%azbatch --backend local --container --requirements bad.txt\nx = 1")
    assert shell.magics_manager.registry["AzBatch"].session.runs == []


def test_cli_reports_mistakes_in_one_line(capsys, tmp_path, monkeypatch):
    from batchmagic.cli import main

    assert main(["image", "build", "--requirements", str(tmp_path / "nope.txt")]) == 2
    assert capsys.readouterr().err == f"batchmagic: --requirements {tmp_path / 'nope.txt'}: no such file\n"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    assert main(["image", "build", "--registry", ""]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_an_index_with_credentials_is_refused_in_one_line_before_anything(shell, monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")  # nothing may be asked of an engine
    monkeypatch.setenv("BATCHMAGIC_PIP_EXTRA_INDEX_URL", "https://me:s3cret@pypi.example.com/simple")
    with pytest.raises(UsageError) as err:
        shell.run_cell("%%azbatch --backend local --container\nx = 1")
    message = str(err.value)
    assert "\n" not in message and "user name or password" in message and "s3cret" not in message
    assert shell.magics_manager.registry["AzBatch"].session.runs == []
    monkeypatch.setenv("BATCHMAGIC_PIP_EXTRA_INDEX_URL", "https://pypi.example.com/simple?token=t0ken")
    with pytest.raises(UsageError) as err:
        shell.run_cell("%%azbatch --backend local --container\nx = 1")
    assert "t0ken" not in str(err.value)
    shell.run_line_magic("config", "AzBatch.pip_extra_index_url = 'pypi.example.com'")
    with pytest.raises(UsageError, match=r"is not an index URL: write it like https://"):
        shell.run_cell("%%azbatch --backend local --container\nx = 1")


def test_the_index_is_where_pip_looks_not_what_the_image_holds():
    plain = environment_spec(["cloudpickle"])
    mirrored = environment_spec(["cloudpickle"], pip_index=" http://127.0.0.1:8080/simple ")
    assert mirrored.pip_index == "http://127.0.0.1:8080/simple"
    assert mirrored.hash == plain.hash and "127.0.0.1" not in mirrored.to_json()
