"""``batchmagic image build --gpu``: the spec of a GPU image (CUDA builds, a CUDA base) and what it changed, said.
The engine is left out (ensure_image replaced): the build itself is tested in tests/test_image.py."""

from __future__ import annotations

from typing import Any

import pytest

from batchmagic import cli
from batchmagic.package import environment, image
from batchmagic.package.cuda import cuda_base_image
from batchmagic.package.environment import python_version


def test_image_build_gpu_builds_the_cuda_spec_and_says_what_changed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    built: list[Any] = []

    class Result:
        image, built, pushed, bytes_pushed, seconds = "batchmagic:env-abc", True, False, 0, 1.0

    def ensure(spec: Any, registry: str, **kwargs: Any) -> Result:
        built.append(spec)
        return Result()

    monkeypatch.setattr(image, "ensure_image", ensure)
    monkeypatch.setattr(environment, "distributions_for", lambda modules: ({"torch": "2.5.1+cpu"}, []))
    monkeypatch.delenv("BATCHMAGIC_GPU_BASE_IMAGE", raising=False)
    monkeypatch.delenv("BATCHMAGIC_REGISTRY", raising=False)
    assert cli.main(["image", "build", "--gpu", "--import", "torch", "--no-push"]) == 0
    (spec,) = built
    assert spec.gpu and spec.base_image == cuda_base_image(python_version())
    assert "torch==2.5.1+cu124" in spec.requirements
    err = capsys.readouterr().err
    assert "torch 2.5.1+cpu here -> torch==2.5.1+cu124 from https://download.pytorch.org/whl/cu124" in err
