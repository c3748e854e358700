"""Build the sandbox image from Dockerfile.sandbox; works with no container registry and is idempotent.

Steps: pick a Debian bookworm base (pulled, or made locally with mmdebstrap), download the
Python wheels on the host (pip inside a build container often cannot pass a proxy's TLS),
then `docker build` offline from those wheels. The image is labelled with a hash of its
inputs, so a second run with nothing changed returns in about a second.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import docker
import docker.errors

from server.config import PROJECT_DIR, ConfigError, load_config
from server.containers.image import AGENT_DIR, BASE_PACKAGES, DOCKERFILE, INPUTS_LABEL, inputs_hash, requirements_text

BUILD_DIR = PROJECT_DIR / ".build"
PULLED_BASE = "debian:bookworm-slim"
LOCAL_BASE = "code-interpreter-base:bookworm"
# Debian bookworm's python3 is 3.11: the wheels must be for exactly that interpreter.
TARGET_PYTHON = "3.11"


class BuildError(RuntimeError):
    """One build step failed; the message says which and why."""


def step(message: str) -> None:
    """Print a progress line at once."""
    print(f"==> {message}", flush=True)


def engine_client() -> docker.DockerClient:
    """The local Docker engine, answering; BuildError when it cannot be reached."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        raise BuildError(f"cannot reach the Docker engine: {e}") from e
    return client


def image_is_current(client: docker.DockerClient, tag: str, wanted_hash: str) -> bool:
    """True when an image with this tag exists and was built from the same inputs."""
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return (image.labels or {}).get(INPUTS_LABEL) == wanted_hash


def choose_base(client: docker.DockerClient) -> str:
    """A Debian bookworm base: a local or pullable debian image, else one made with mmdebstrap."""
    for candidate in (PULLED_BASE, LOCAL_BASE):
        try:
            client.images.get(candidate)
            return candidate
        except docker.errors.ImageNotFound:
            pass
    try:
        step(f"pulling {PULLED_BASE}")
        client.images.pull(PULLED_BASE)
        return PULLED_BASE
    except docker.errors.APIError as e:
        step(f"cannot pull {PULLED_BASE} ({e.explanation or e}); making a local base with mmdebstrap")
    if shutil.which("mmdebstrap") is None:
        raise BuildError("base image: no registry reachable and mmdebstrap is not installed "
                         "(apt-get install -y mmdebstrap)")
    started = time.monotonic()
    debootstrap = subprocess.Popen(
        ["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", "bookworm", "-"],
        stdout=subprocess.PIPE,
    )
    imported = subprocess.run(["docker", "import", "-", LOCAL_BASE], stdin=debootstrap.stdout,
                              capture_output=True, text=True)
    debootstrap.stdout.close()
    if debootstrap.wait() != 0 or imported.returncode != 0:
        raise BuildError(f"base image: mmdebstrap/docker import failed: {imported.stderr.strip()}")
    step(f"made {LOCAL_BASE} in {time.monotonic() - started:.0f} s")
    return LOCAL_BASE


def download_wheels(requirements: Path, wheels: Path) -> None:
    """Fetch manylinux wheels for the image's Python on the host, into the build context."""
    machine = platform.machine()
    platforms = [f"manylinux{tag}_{machine}" for tag in ("2014", "_2_17", "_2_28")]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--only-binary=:all:", "--python-version", TARGET_PYTHON, "--implementation", "cp",
               "-d", str(wheels), "-r", str(requirements)]
    for tag in platforms:
        command += ["--platform", tag]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"downloading wheels failed: {result.stderr.strip()[-2000:]}")


def prepare_context(dependencies: tuple[str, ...]) -> Path:
    """Lay out .build/: Dockerfile, agent sources, requirements and the wheels they need."""
    BUILD_DIR.mkdir(exist_ok=True)
    shutil.copy(DOCKERFILE, BUILD_DIR / "Dockerfile.sandbox")
    shutil.rmtree(BUILD_DIR / "sandbox", ignore_errors=True)
    shutil.copytree(AGENT_DIR, BUILD_DIR / "sandbox", ignore=shutil.ignore_patterns("__pycache__"))
    requirements = BUILD_DIR / "requirements.txt"
    requirements.write_text(requirements_text(dependencies))
    wheels = BUILD_DIR / "wheels"
    wheels.mkdir(exist_ok=True)
    step(f"downloading wheels for Python {TARGET_PYTHON} into {wheels.relative_to(PROJECT_DIR)}")
    download_wheels(requirements, wheels)
    return BUILD_DIR


def docker_build(client: docker.DockerClient, context: Path, tag: str, base: str, wanted_hash: str,
                 dockerfile: str = "Dockerfile.sandbox") -> None:
    """Run the image build, streaming its log; raise BuildError naming the failing step."""
    current_step = "starting"
    stream = client.api.build(path=str(context), dockerfile=dockerfile, tag=tag, rm=True,
                              forcerm=True, buildargs={"BASE_IMAGE": base},
                              labels={INPUTS_LABEL: wanted_hash}, decode=True)
    for chunk in stream:
        if "stream" in chunk:
            text = chunk["stream"]
            if text.startswith("Step "):
                current_step = text.strip()
            print(text, end="", flush=True)
        if "error" in chunk:
            raise BuildError(f"docker build failed at {current_step!r}: {chunk['error'].strip()}")


def build(config_path: str | None = None, force: bool = False) -> str:
    """Build (or confirm) the sandbox image named by the config; return its tag."""
    config = load_config(config_path)
    tag = config.interpreter_image
    wanted_hash = inputs_hash(config.dependencies)
    client = engine_client()
    if not force and image_is_current(client, tag, wanted_hash):
        step(f"{tag} is up to date (inputs {wanted_hash[:12]})")
        return tag
    started = time.monotonic()
    step(f"building {tag} (inputs {wanted_hash[:12]})")
    base = choose_base(client)
    step(f"base image {base}")
    context = prepare_context(config.dependencies)
    docker_build(client, context, tag, base, wanted_hash)
    size_mb = client.images.get(tag).attrs["Size"] / 1e6
    step(f"built {tag} in {time.monotonic() - started:.0f} s, {size_mb:.0f} MB")
    return tag


def main() -> int:
    """Command line: python3 build.py [--config FILE] [--force]."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="config file (default: config.yaml)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the image is current")
    args = parser.parse_args()
    try:
        build(args.config, force=args.force)
    except (BuildError, ConfigError) as e:
        print(f"build.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
