"""Where a run's image comes from, decided before packaging, and the version guard after it.

:func:`plan_image` checks the image flags against the backend and returns an :class:`ImageRequest`
(or None when the run needs no image of ours); :meth:`ImageRequest.resolve` then either checks a
given image against the kernel (the guard: Python and the versions of the packages the shipped
objects need) or builds and pushes one for the cell (:func:`~batchmagic.package.image.engine.ensure_image`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from batchmagic.config import Secrets
from batchmagic.errors import ConfigError
from batchmagic.package.environment import EnvironmentSpec, check_compatible, split_registry
from batchmagic.package.image.engine import ImageResult, NoEngineError, ensure_image, image_labels
from batchmagic.package.image.registry import split_image
from batchmagic.run.state import Phase
from batchmagic.sandbox import IMAGE as EMULATOR_IMAGE

if TYPE_CHECKING:
    from batchmagic.package.capture import CapturedCell

__all__ = ["GuardMemo", "GuardWarning", "ImageRequest", "plan_image"]


@dataclass
class GuardMemo:
    """What a kernel (its :class:`~batchmagic.api.Session`) learnt of given images: each is looked at once.

    ``labels`` of the images read; ``unchecked`` those that could not be looked at (said once, if at all).
    """

    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    unchecked: set[str] = field(default_factory=set)


class GuardWarning(UserWarning):
    """The version guard could not look at the configured image; the run goes on unchecked."""


@dataclass
class ImageRequest:
    """How a submit gets its image: a given one (checked by the guard) or one built for the cell.

    Made by :func:`plan_image` before anything is packaged (so a bad ``--requirements`` is one line
    up front); :meth:`resolve` runs after packaging, when the shipped objects are known.
    """

    given: str = ""
    registry: str = ""
    base_image: str = ""
    requirements: str | Path | None = None
    pip: tuple[str, ...] = ()
    push: bool = True
    engine_first: bool = False
    configured: bool = False  # ``given`` came from the settings (AzBatch.image), not from --image
    secrets: Secrets = field(default_factory=Secrets, repr=False)  # the registry's credentials, if any
    result: ImageResult | None = None
    gpu: bool = False  # for a GPU node: CUDA builds of the frameworks, on a CUDA base image
    notes: tuple[str, ...] = ()  # what the GPU mapping changed, once the spec is made (the plan says so)
    pip_index: str = ""  # an index the build's pip uses besides PyPI (AzBatch.pip_extra_index_url)

    def for_gpu(self, gpu_base_image: str = "") -> None:
        """Build for a GPU node: FROM ``gpu_base_image`` (``AzBatch.gpu_base_image``), else the CUDA runtime image
        for the kernel's Python (:func:`~batchmagic.package.cuda.cuda_base_image`); the frameworks' CUDA builds."""
        from batchmagic.package.cuda import cuda_base_image
        from batchmagic.package.environment import python_version

        self.gpu = True
        self.base_image = gpu_base_image or cuda_base_image(python_version())

    memo: GuardMemo = field(default_factory=GuardMemo)  # the session's: an image is checked once per kernel

    def _guard(self, modules: Iterable[str]) -> str:
        """Check the given image against the kernel: its labels are read once per image and kernel; a
        configured image that cannot be looked at runs unchecked, said once (and not at all when there is
        no Docker engine here to ask: the run's nodes pull it, nothing here can do better). The Batch
        emulator's placeholder (``batchmagic emulator``) names no image at all: nothing to check, nothing said."""
        labels: dict[str, str] | None
        if self.configured and self.given == EMULATOR_IMAGE:
            return self.given
        if self.given in self.memo.labels:
            labels = self.memo.labels[self.given]
        elif self.given in self.memo.unchecked:
            return self.given
        else:
            try:
                labels = image_labels(self.given, engine_first=self.engine_first, secrets=self.secrets)
            except ConfigError as err:
                if self.configured:
                    self.memo.unchecked.add(self.given)
                    if not isinstance(err, NoEngineError):
                        warnings.warn(f"could not check {self.given} against this kernel: {err}", GuardWarning, 2)
                    return self.given
                if self.engine_first or split_image(self.given)[0]:
                    raise
                labels = {}  # a public image name and no engine here to ask: nothing to compare
            if labels is None and self.configured:
                self.memo.unchecked.add(self.given)
                warnings.warn(f"{self.given} is not in its registry (as far as this client can see)", GuardWarning, 2)
                return self.given
            if labels is None:
                where = "the local Docker engine" if self.engine_first else f"registry {split_image(self.given)[0]}"
                raise ConfigError(f"image {self.given} is not in {where}: build it first or check the name")
            self.memo.labels[self.given] = labels
        check_compatible(self.given, labels or {}, modules)
        return self.given

    def spec_for(self, modules: Iterable[str]) -> EnvironmentSpec:
        from batchmagic.package.environment import environment_spec

        spec = environment_spec(
            modules, base_image=self.base_image, requirements=self.requirements, pip=self.pip, gpu=self.gpu,
            pip_index=self.pip_index,
        )  # fmt: skip
        self.notes = spec.notes
        return spec

    def resolve(self, captured: CapturedCell, enter: Callable[[Phase, str], None]) -> str:
        """The image to run ``captured`` in.

        ``enter(phase, detail)`` is called for the build and push phases (``Run._enter``).

        Raises
        ------
        ConfigError
            The guard found a mismatch, or the image could not be found, built or pushed.
        """
        from batchmagic.package.environment import shipped_modules

        modules = shipped_modules(captured.path, captured.analysis.imported_modules, captured.manifest.modules)
        if self.given:
            return self._guard(modules)
        spec = self.spec_for(modules)
        stages = {"building": Phase.BUILDING_IMAGE, "pushing": Phase.PUSHING_IMAGE}
        # A GPU build says what it changed from the kernel's packages (torch 2.5.1+cpu here -> +cu124 there).
        said = f" ({'; '.join(self.notes)})" if self.notes else ""
        self.result = ensure_image(
            spec,
            self.registry,
            push=self.push,
            progress=lambda stage, detail: enter(stages[stage], detail + (said if stage == "building" else "")),
            secrets=self.secrets,
        )
        return self.result.image


def plan_image(
    backend: str,
    *,
    image: str | None = None,
    configured_image: str | None = None,
    container: bool = False,
    registry: str = "",
    base_image: str = "",
    requirements: str | Path | None = None,
    pip: Iterable[str] = (),
    secrets: Secrets | None = None,
    pip_index: str = "",
) -> ImageRequest | None:
    """Decide, before packaging, where a run's image comes from; None when it needs none of ours.

    - ``--image`` given: that image, after the guard.
    - ``--backend local --container``: build (or reuse) the image in the local engine, no push.
    - Azure with no image configured and a registry (``Settings.registry``): build-or-reuse and push.

    ``registry``, ``base_image`` (default :data:`~batchmagic.settings.DEFAULT_BASE_IMAGE`), ``secrets``
    (the registry's credentials) and ``pip_index`` (``AzBatch.pip_extra_index_url``) come from the session's
    :class:`~batchmagic.config.Settings`.

    Raises
    ------
    ConfigError
        ``--requirements`` missing or unparsable, a malformed ``--pip`` or registry, or flags that
        do not apply (``--container`` on Azure, ``--requirements`` with ``--image``).
    """
    from batchmagic.package.environment import check_pip_index, parse_pip, read_requirements
    from batchmagic.settings import DEFAULT_BASE_IMAGE

    pip = tuple(pip or ())
    base_image = base_image or DEFAULT_BASE_IMAGE
    secrets = secrets or Secrets()
    if container and backend != "local":
        raise ConfigError("--container is for --backend local (on Azure every task runs in a container)")
    if image and (requirements or pip):
        raise ConfigError("--image runs a prebuilt image as is: drop --requirements/--pip, or drop --image to build")
    if requirements:
        read_requirements(requirements)
    parse_pip(pip)
    pip_index = check_pip_index(pip_index)
    if registry:
        split_registry(registry)
    if image:
        if backend == "local" and not container:
            raise ConfigError("--image on the local backend needs --container (it runs the task in that image)")
        return ImageRequest(secrets=secrets, given=image, engine_first=backend == "local")
    if backend == "local":
        if not container:
            if requirements or pip:
                raise ConfigError("--requirements/--pip build an image: add --container, or use the azure backend")
            return None
        return ImageRequest(
            secrets=secrets, registry=registry, base_image=base_image, requirements=requirements, pip=pip, push=False,
            pip_index=pip_index,
        )  # fmt: skip
    if configured_image and not (requirements or pip):
        return ImageRequest(secrets=secrets, given=configured_image, configured=True)  # the guard runs on it too
    if not registry:
        if requirements or pip:
            raise ConfigError(
                "--requirements/--pip need a registry to push the image to: set BATCHMAGIC_REGISTRY "
                "(e.g. myregistry.azurecr.io/batchmagic) or %config AzBatch.registry = '...'"
            )
        return None
    return ImageRequest(
        secrets=secrets, registry=registry, base_image=base_image, requirements=requirements, pip=pip,
        pip_index=pip_index,
    )  # fmt: skip
