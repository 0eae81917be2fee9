"""The training image: ask the registry, build with the docker SDK only when needed, push, guard.

One module per job::

    settings.py   the environment variables the image code reads, in one function
    registry.py   the registry HTTP API v2 client (manifest HEAD, config blob, tags; auth incl. ACR)
    context.py    the build context: container/Dockerfile, requirements.txt, a wheel of this batchmagic
    engine.py     the Docker engine: build and push when the registry lacks the tag, read labels, list
    plan.py       plan_image and ImageRequest: where a run's image comes from, and the version guard

Everything other modules use is importable from here.
"""

from __future__ import annotations

from batchmagic.package.image.context import build_context, build_wheel
from batchmagic.package.image.engine import (
    API_TIMEOUT,
    PING_TIMEOUT,
    ImageResult,
    Progress,
    connect_engine,
    describe,
    ensure_image,
    image_labels,
    list_images,
)
from batchmagic.package.image.plan import GuardWarning, ImageRequest, plan_image
from batchmagic.package.image.registry import REGISTRY_TIMEOUT, RegistryClient, registry_credentials, split_image

__all__ = [
    "API_TIMEOUT",
    "PING_TIMEOUT",
    "REGISTRY_TIMEOUT",
    "GuardWarning",
    "ImageRequest",
    "ImageResult",
    "Progress",
    "RegistryClient",
    "build_context",
    "build_wheel",
    "connect_engine",
    "describe",
    "ensure_image",
    "image_labels",
    "list_images",
    "plan_image",
    "registry_credentials",
    "split_image",
]
