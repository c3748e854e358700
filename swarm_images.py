"""What goes into the swarm's two other images (the center's and PostgreSQL's), and the hash each carries.

build.py (`--swarm`) lays out their build contexts from these lists and labels each image with the
hash of its inputs, so an unchanged checkout rebuilds nothing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from config import PROJECT_DIR

DEPLOY_DIR = PROJECT_DIR / "deploy"
CENTER_DOCKERFILE = DEPLOY_DIR / "Dockerfile.center"
POSTGRES_DOCKERFILE = DEPLOY_DIR / "Dockerfile.postgres"
POSTGRES_ENTRYPOINT = DEPLOY_DIR / "postgres-entrypoint.sh"
DEFAULT_CENTER_IMAGE = "code-interpreter-center:latest"
DEFAULT_POSTGRES_IMAGE = "code-interpreter-postgres:15"
# The center's folders and single files; with them every top-level module (center.py and its imports).
CENTER_DIRS = ("api", "sandbox", "seccomp", "templates")
CENTER_FILES = ("config.yaml", "requirements.txt", "Dockerfile.sandbox", "deploy/center_entrypoint.py")


def center_sources() -> list[Path]:
    """Every file of the checkout the center's image holds, sorted (relative to the project)."""
    files = [path for path in PROJECT_DIR.glob("*.py")]
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
