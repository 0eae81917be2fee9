"""The builds a GPU node needs (batchmagic.package.cuda), the GPU spec that carries them, the guard expecting them."""

from __future__ import annotations

import pytest

from batchmagic.errors import ConfigError
from batchmagic.package import environment
from batchmagic.package.cuda import expected_on_node, map_for_gpu
from batchmagic.package.environment import LABEL, EnvironmentSpec, check_compatible, environment_spec


@pytest.mark.parametrize(
    ("kernel", "node", "index"),
    [
        ("2.5.1+cpu", "torch==2.5.1+cu124", "https://download.pytorch.org/whl/cu124"),
        ("2.5.1", "torch==2.5.1+cu124", "https://download.pytorch.org/whl/cu124"),  # the macOS wheel
        ("2.3.0+cpu", "torch==2.3.0+cu121", "https://download.pytorch.org/whl/cu121"),
        ("2.7.1+cpu", "torch==2.7.1+cu126", "https://download.pytorch.org/whl/cu126"),
        ("2.13.0+cpu", "torch==2.13.0+cu126", "https://download.pytorch.org/whl/cu126"),
        ("2.4.0+cu118", "torch==2.4.0+cu118", "https://download.pytorch.org/whl/cu118"),  # already CUDA: its index
    ],
)
def test_torch_maps_to_the_linux_cuda_wheel_of_the_same_version(kernel: str, node: str, index: str) -> None:
    builds = map_for_gpu({"torch": kernel, "numpy": "2.1.3"})
    assert builds.requirements == ("numpy==2.1.3", node)
    assert builds.index_urls == (index,)
    assert builds.notes == (f"torch {kernel} here -> {node} from {index} on the GPU node",)


def test_torchvision_and_torchaudio_take_torchs_cuda_tag() -> None:
    builds = map_for_gpu({"torch": "2.5.1+cpu", "torchvision": "0.20.1+cpu", "torchaudio": "2.5.1"})
    assert builds.requirements == ("torch==2.5.1+cu124", "torchaudio==2.5.1+cu124", "torchvision==0.20.1+cu124")
    assert builds.index_urls == ("https://download.pytorch.org/whl/cu124",)


def test_jax_gets_its_cuda12_extra_and_jaxlib_stays() -> None:
    builds = map_for_gpu({"jax": "0.4.35", "jaxlib": "0.4.35"})
    assert builds.requirements == ("jax[cuda12]==0.4.35", "jaxlib==0.4.35")
    assert builds.index_urls == ()
    assert builds.notes == ("jax 0.4.35 here -> jax[cuda12]==0.4.35 on the GPU node",)


@pytest.mark.parametrize("name", ["tensorflow", "tensorflow-cpu", "tensorflow-macos"])
def test_tensorflow_builds_map_to_and_cuda(name: str) -> None:
    builds = map_for_gpu({name: "2.17.0", "tensorflow-metal": "1.1.0"})
    assert builds.requirements == ("tensorflow[and-cuda]==2.17.0",)
    assert any("tensorflow-metal 1.1.0 here is for Apple GPUs" in n for n in builds.notes)


def test_cupy_maps_to_the_cuda12_wheel_and_the_rest_is_unchanged() -> None:
    builds = map_for_gpu({"cupy": "13.3.0", "pandas": "2.2.3"})
    assert builds.requirements == ("cupy-cuda12x==13.3.0", "pandas==2.2.3")
    assert builds.notes == ("cupy 13.3.0 here -> cupy-cuda12x==13.3.0 on the GPU node",)
    assert map_for_gpu({"pandas": "2.2.3"}).notes == ()


def test_expected_on_node_is_the_guards_view() -> None:
    assert expected_on_node("torch", "2.5.1+cpu") == ("torch", "2.5.1+cu124")
    assert expected_on_node("tensorflow-macos", "2.16.2") == ("tensorflow", "2.16.2")
    assert expected_on_node("tensorflow-metal", "1.1.0") is None
    assert expected_on_node("numpy", "2.1.3") == ("numpy", "2.1.3")


def _kernel(monkeypatch: pytest.MonkeyPatch, pins: dict[str, str]) -> None:
    monkeypatch.setattr(environment, "distributions_for", lambda modules: (dict(pins), []))


def test_a_gpu_spec_holds_the_cuda_builds_and_their_index(monkeypatch: pytest.MonkeyPatch) -> None:
    _kernel(monkeypatch, {"torch": "2.5.1+cpu", "jax": "0.4.35"})
    cpu = environment_spec(["torch", "jax"], base_image="python:3.11-slim")
    gpu = environment_spec(["torch", "jax"], base_image="nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04", gpu=True)
    assert "torch==2.5.1+cpu" in cpu.requirements and not cpu.gpu and cpu.index_urls == ()
    assert "gpu" not in cpu.to_dict()  # a CPU spec's hash is what it always was
    assert {"torch==2.5.1+cu124", "jax[cuda12]==0.4.35"} <= set(gpu.requirements)
    assert gpu.requirements_txt().startswith("--extra-index-url https://download.pytorch.org/whl/cu124\n")
    assert "torch==2.5.1+cu124\n" in gpu.requirements_txt()
    assert len(gpu.notes) == 2 and gpu.hash != cpu.hash
    again = EnvironmentSpec.from_json(gpu.to_json())  # the spec read back from the image's label
    assert again.gpu and again.index_urls == gpu.index_urls and again.hash == gpu.hash


def test_an_explicit_cuda_pip_gets_its_index(monkeypatch: pytest.MonkeyPatch) -> None:
    _kernel(monkeypatch, {"torch": "2.5.1+cpu"})
    spec = environment_spec(["torch"], pip=["torch==2.5.1+cu121"], gpu=True)
    assert "torch==2.5.1+cu121" in spec.requirements and "torch==2.5.1+cu124" not in spec.requirements
    assert spec.index_urls == ("https://download.pytorch.org/whl/cu121",)


def test_the_guard_expects_the_cuda_builds_on_a_gpu_image(monkeypatch: pytest.MonkeyPatch) -> None:
    _kernel(monkeypatch, {"torch": "2.5.1+cpu", "tensorflow-macos": "2.16.2", "tensorflow-metal": "1.1.0"})
    gpu = environment_spec(["torch", "tensorflow"], gpu=True)
    labels = {LABEL: gpu.to_json()}
    check_compatible("reg/img:gpu", labels, ["torch", "tensorflow"])  # no error: the expected differences
    cpu = environment_spec(["torch", "tensorflow"])
    check_compatible("reg/img:cpu", {LABEL: cpu.to_json()}, ["torch"])
    # A GPU image whose torch is another version is still a mismatch, named with both versions.
    other = EnvironmentSpec.from_json(gpu.to_json().replace("2.5.1+cu124", "2.4.0+cu124"))
    with pytest.raises(ConfigError, match=r"torch 2\.5\.1\+cpu in the kernel, 2\.4\.0\+cu124 in the image"):
        check_compatible("reg/img:old", {LABEL: other.to_json()}, ["torch"])
    # A CPU image guarded for a CPU kernel still sees the CUDA build as a difference.
    with pytest.raises(ConfigError, match="torch 2.5.1"):
        check_compatible("reg/img:gpu-as-cpu", {LABEL: gpu.to_json().replace('"gpu":true,', "")}, ["torch"])
