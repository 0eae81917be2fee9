"""The training image: time and bytes pushed for a first run (build + push into an empty registry)
and for a re-run with an unchanged environment, which must cost zero builds and zero bytes.

Real parts, as the tests start them (tests/support/docker.py): a private dockerd (or $DOCKER_HOST),
Debian's docker-registry on loopback, and the debootstrap base image (cached under /tmp). A fresh
private dockerd has no layer cache, so the first run is a full build.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from batchmagic.package.environment import environment_spec
from batchmagic.package.image import ensure_image


def main() -> dict[str, float]:
    from tests.support.docker import DockerEngine, make_base_image, start_dockerd, start_registry

    with ExitStack() as stack:
        host = os.environ.get("DOCKER_HOST", "")
        engine = DockerEngine(host) if host else stack.enter_context(start_dockerd())
        registry = stack.enter_context(start_registry(Path(tempfile.mkdtemp(prefix="bench-registry-"))))
        base = make_base_image(engine)
        saved = {
            k: os.environ.get(k)
            for k in ("DOCKER_HOST", "BATCHMAGIC_REGISTRY_USERNAME", "BATCHMAGIC_REGISTRY_PASSWORD")
        }
        os.environ.update(
            DOCKER_HOST=engine.host,
            BATCHMAGIC_REGISTRY_USERNAME=registry.username,
            BATCHMAGIC_REGISTRY_PASSWORD=registry.password,
        )
        try:
            spec = environment_spec(["tabulate"], base_image=base)
            target = f"{registry.host}/batchmagic"
            t0 = time.perf_counter()
            first = ensure_image(spec, target)
            t1 = time.perf_counter()
            uploads = len(registry.uploads())
            again = ensure_image(spec, target)
            t2 = time.perf_counter()
            uploads_again = len(registry.uploads()) - uploads
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    first_s, again_s = t1 - t0, t2 - t1
    print(f"image        {first.image}")
    mb = first.bytes_pushed / 1e6
    print(f"first run    {first_s:6.1f} s  built={first.built} pushed={first.pushed}  {mb:.1f} MB pushed")
    print(
        f"re-run       {again_s:6.2f} s  built={again.built} pushed={again.pushed}  {again.bytes_pushed} bytes pushed"
    )
    print(f"ratio        {again_s / first_s:.4f} (re-run / first run); registry uploads on re-run: {uploads_again}")
    assert again.bytes_pushed == 0 and not again.built and uploads_again == 0
    return {
        "image_first_run_s": first_s,
        "image_first_run_pushed_mb": mb,
        "image_rerun_s": again_s,
        "image_rerun_pushed_bytes": again.bytes_pushed,
        "image_rerun_registry_uploads": uploads_again,
        "image_rerun_ratio": again_s / first_s,
    }


if __name__ == "__main__":
    main()
