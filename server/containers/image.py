"""What goes into the sandbox image, and the hash of it that the image carries as a label.

build.py writes the label when it builds; the center compares it at start, so that a checkout
whose agent changed is never served by an image holding the old one.
"""

from __future__ import annotations

import hashlib

from server.config import PROJECT_DIR

DOCKERFILE = PROJECT_DIR / "Dockerfile.sandbox"
AGENT_DIR = PROJECT_DIR / "sandbox"
INPUTS_LABEL = "code-interpreter.inputs-sha256"
# Debian packages the image needs; baked straight into a locally made base image.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "fontconfig", "fonts-wqy-microhei",
                 "libnss-extrausers", "busybox")
BUILD_FORMAT_VERSION = "1"  # bump when build.py changes what goes into the image


def requirements_text(dependencies: tuple[str, ...]) -> str:
    """The sandbox's requirements: the configured dependencies (the agent needs only the standard library)."""
    return "".join(f"{name}\n" for name in dependencies)


def inputs_hash(dependencies: tuple[str, ...]) -> str:
    """sha256 over everything that goes into the image: Dockerfile, agent sources, requirements."""
    digest = hashlib.sha256()
    digest.update(BUILD_FORMAT_VERSION.encode())
    digest.update(DOCKERFILE.read_bytes())
    for path in sorted(AGENT_DIR.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(PROJECT_DIR)).encode())
            digest.update(path.read_bytes())
    digest.update(requirements_text(dependencies).encode())
    digest.update(" ".join(BASE_PACKAGES).encode())
    return digest.hexdigest()
