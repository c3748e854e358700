"""The swarm's images besides the sandbox's: the center's, PostgreSQL's and the front door's, built offline.

`python3 deploy/swarm/images.py` (run by `make swarm-up`, deploy/swarm/swarm.py) builds the sandbox
image (build.py) and then these, each on the same Debian base and labelled with the hash of its
inputs, so an unchanged checkout rebuilds nothing. The center's image takes the center's folders
and its two root modules, never the client tools beside them.
"""


from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]
if str(PROJECT_DIR) not in sys.path:  # run as a script: the project's modules by their names
    sys.path.insert(0, str(PROJECT_DIR))

import build  # noqa: E402 - after the path is set

DEPLOY_DIR = PROJECT_DIR / "deploy"
CENTER_DOCKERFILE = DEPLOY_DIR / "Dockerfile.center"
POSTGRES_DOCKERFILE = DEPLOY_DIR / "Dockerfile.postgres"
POSTGRES_ENTRYPOINT = DEPLOY_DIR / "postgres-entrypoint.sh"
FRONT_DOOR_DOCKERFILE = DEPLOY_DIR / "Dockerfile.front_door"
FRONT_DOOR_DIR = DEPLOY_DIR / "front_door"  # haproxy.cfg, hold.lua, errors/: copied whole into the image
DEFAULT_CENTER_IMAGE = "code-interpreter-center:latest"
DEFAULT_POSTGRES_IMAGE = "code-interpreter-postgres:15"
DEFAULT_FRONT_DOOR_IMAGE = "code-interpreter-front-door:latest"
# What the center's image holds: its folders, and the single files the center runs on (its entry point
# and tables, its config, the sandbox image's inputs and the container's entrypoint). Not the client
# tools at the root: they talk to a center, they are not part of one.
CENTER_DIRS = ("server", "sandbox", "seccomp", "templates")
CENTER_FILES = ("center.py", "models.py", "config.yaml", "requirements.txt", "Dockerfile.sandbox",
                "deploy/center_entrypoint.py", "deploy/front_door_agent.py")


def center_sources() -> list[Path]:
    """Every file of the checkout the center's image holds, sorted (relative to the project)."""
    files: list[Path] = []
    for folder in CENTER_DIRS:
        files += [path for path in (PROJECT_DIR / folder).rglob("*")
                  if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"]
    files += [PROJECT_DIR / name for name in CENTER_FILES]
    return sorted(path.relative_to(PROJECT_DIR) for path in files)


def _digest(paths: list[Path], base: str) -> str:
    """sha256 over the files' names and contents and the base image's name."""
    digest = hashlib.sha256(base.encode())
    for path in paths:
        digest.update(str(path).encode())
        digest.update((PROJECT_DIR / path).read_bytes())
    return digest.hexdigest()


def center_inputs_hash(base: str) -> str:
    """The hash of the center's image: its Dockerfile and every source file it holds."""
    return _digest([CENTER_DOCKERFILE.relative_to(PROJECT_DIR), *center_sources()], base)


def postgres_inputs_hash(base: str) -> str:
    """The hash of PostgreSQL's image: its Dockerfile and entrypoint."""
    return _digest([POSTGRES_DOCKERFILE.relative_to(PROJECT_DIR), POSTGRES_ENTRYPOINT.relative_to(PROJECT_DIR)], base)


def front_door_sources() -> list[Path]:
    """The files of deploy/front_door/, sorted (relative to the project)."""
    return sorted(path.relative_to(PROJECT_DIR) for path in FRONT_DOOR_DIR.rglob("*") if path.is_file())


def front_door_inputs_hash(base: str) -> str:
    """The hash of the front door's image: its Dockerfile and HAProxy's configuration, script and error pages."""
    return _digest([FRONT_DOOR_DOCKERFILE.relative_to(PROJECT_DIR), *front_door_sources()], base)


def build_front_door(tag: str = DEFAULT_FRONT_DOOR_IMAGE, force: bool = False) -> str:
    """Build (or confirm) the front door's image the way build.py builds the others: on the same Debian base,
    offline but for Debian's archive, labelled with its inputs' hash. Raises build.BuildError."""
    client = build.engine_client()
    base = build.choose_base(client)
    wanted_hash = front_door_inputs_hash(base)
    if not force and build.image_is_current(client, tag, wanted_hash):
        build.step(f"{tag} is up to date (inputs {wanted_hash[:12]})")
        return tag
    context = build.BUILD_DIR / "front_door"
    shutil.rmtree(context, ignore_errors=True)
    shutil.copytree(FRONT_DOOR_DIR, context, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(FRONT_DOOR_DOCKERFILE, context / FRONT_DOOR_DOCKERFILE.name)
    build.step(f"building {tag} on {base} (inputs {wanted_hash[:12]})")
    build.docker_build(client, context, tag, base, wanted_hash, FRONT_DOOR_DOCKERFILE.name)
    return tag


def prepare_center_context() -> Path:
    """Lay out .build/center/: the center's Dockerfile, its sources under app/, and the wheels it needs."""
    context = build.BUILD_DIR / "center"
    shutil.rmtree(context / "app", ignore_errors=True)
    (context / "wheels").mkdir(parents=True, exist_ok=True)
    shutil.copy(CENTER_DOCKERFILE, context / "Dockerfile.center")
    for relative in center_sources():
        target = context / "app" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT_DIR / relative, target)
    shutil.copy(PROJECT_DIR / "requirements.txt", context / "requirements.txt")
    build.step(f"downloading the center's wheels for Python {build.TARGET_PYTHON}")
    build.download_wheels(context / "requirements.txt", context / "wheels")
    return context


def prepare_postgres_context() -> Path:
    """Lay out .build/postgres/: PostgreSQL's Dockerfile and entrypoint."""
    context = build.BUILD_DIR / "postgres"
    context.mkdir(parents=True, exist_ok=True)
    shutil.copy(POSTGRES_DOCKERFILE, context / "Dockerfile.postgres")
    shutil.copy(POSTGRES_ENTRYPOINT, context / "postgres-entrypoint.sh")
    return context


def build_swarm(center_tag: str = DEFAULT_CENTER_IMAGE,
                postgres_tag: str = DEFAULT_POSTGRES_IMAGE, force: bool = False) -> tuple[str, str]:
    """Build (or confirm) the center's and PostgreSQL's images for deploy/swarm/stack.yml."""
    client = build.engine_client()
    base = build.choose_base(client)
    for tag, wanted_hash, prepare, dockerfile in (
        (center_tag, center_inputs_hash(base), prepare_center_context, "Dockerfile.center"),
        (postgres_tag, postgres_inputs_hash(base), prepare_postgres_context, "Dockerfile.postgres"),
    ):
        if not force and build.image_is_current(client, tag, wanted_hash):
            build.step(f"{tag} is up to date (inputs {wanted_hash[:12]})")
            continue
        started = time.monotonic()
        build.step(f"building {tag} on {base} (inputs {wanted_hash[:12]})")
        build.docker_build(client, prepare(), tag, base, wanted_hash, dockerfile)
        build.step(f"built {tag} in {time.monotonic() - started:.0f} s")
    return center_tag, postgres_tag

def main() -> int:
    """Command line: the sandbox image, then the center's, PostgreSQL's and the front door's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when an image is current")
    parser.add_argument("--center-image", default=DEFAULT_CENTER_IMAGE, help="the center's image tag")
    parser.add_argument("--postgres-image", default=DEFAULT_POSTGRES_IMAGE, help="PostgreSQL's image tag")
    parser.add_argument("--front-door-image", default=DEFAULT_FRONT_DOOR_IMAGE, help="the front door's image tag")
    args = parser.parse_args()
    try:
        build.build(force=args.force)
        build_swarm(args.center_image, args.postgres_image, force=args.force)
        build_front_door(args.front_door_image, force=args.force)
    except build.BuildError as e:
        print(f"images.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
