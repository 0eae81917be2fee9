"""The image code's settings from the environment, read in this one place and passed down.

The registry credentials are secrets: never traits, never logged, never repr'd.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["ImageSettings", "image_settings"]


@dataclass(frozen=True)
class ImageSettings:
    """What the image code reads from the environment.

    Attributes
    ----------
    registry_username, registry_password : str
        ``BATCHMAGIC_REGISTRY_USERNAME`` / ``BATCHMAGIC_REGISTRY_PASSWORD``; empty when unset.
    docker_host : str
        ``DOCKER_HOST``, only to name the engine in an error (the docker SDK reads it itself).
    """

    registry_username: str = ""
    registry_password: str = field(default="", repr=False)
    docker_host: str = ""


def image_settings() -> ImageSettings:
    """Read the image code's environment variables now (at call time, so a changed variable counts)."""
    return ImageSettings(
        registry_username=os.environ.get("BATCHMAGIC_REGISTRY_USERNAME", ""),
        registry_password=os.environ.get("BATCHMAGIC_REGISTRY_PASSWORD", ""),
        docker_host=os.environ.get("DOCKER_HOST", ""),
    )
