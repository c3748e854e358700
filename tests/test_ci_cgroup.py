"""The cgroup step of .ci/run, run against stand-ins for a machine's cgroup files.

On a fresh machine of this project's kind the v2 half of the hybrid layout holds `hugetlb`
(`/sys/fs/cgroup/unified/cgroup.controllers` reads "hugetlb"), and crun refuses every container
until that controller has a v1 hierarchy. cgroupfs files report size 0 whatever they hold; a FIFO
does too, so it stands in for one: a step that tested the size (`[ -s FILE ]`) would see nothing.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from server.config import PROJECT_DIR

STEP = PROJECT_DIR / ".ci" / "cgroup-hybrid-fix"
FRESH_MACHINE_CONTROLLERS = "hugetlb\n"  # read off a fresh machine of this kind, before any CI run


def cgroup_root(tmp_path: Path, controllers: str, mounted: tuple[str, ...] = ()) -> Path:
    """A stand-in cgroup root whose unified/cgroup.controllers is a FIFO (size 0) holding `controllers`."""
    root = tmp_path / "cgroup"
    (root / "unified").mkdir(parents=True)
    fifo = root / "unified" / "cgroup.controllers"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "w") as f:
            f.write(controllers)

    threading.Thread(target=feed, daemon=True).start()
    for name in mounted:
        (root / name).mkdir()
    (tmp_path / "mounted").write_text("".join(f"{root / name}\n" for name in mounted))
    return root


def run_step(tmp_path: Path, root: Path, mount_fails: bool = False) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the step with recorders for mount and mountpoint; returns (result, the mount calls made)."""
    calls = tmp_path / "mount-calls"
    recorder = tmp_path / "fake-mount"
    recorder.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexit {1 if mount_fails else 0}\n')
    checker = tmp_path / "fake-mountpoint"
    checker.write_text(f'#!/bin/sh\ngrep -qxF "$2" {tmp_path / "mounted"}\n')
    for script in (recorder, checker):
        script.chmod(0o755)
    assert os.stat(root / "unified" / "cgroup.controllers").st_size == 0, "the stand-in reports size 0, like cgroupfs"
    result = subprocess.run(["bash", str(STEP), str(root)], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "CGROUP_MOUNT": str(recorder), "CGROUP_MOUNTPOINT": str(checker)})
    return result, calls.read_text().splitlines() if calls.exists() else []


def test_a_fresh_machine_gets_hugetlb_moved_to_cgroup_v1(tmp_path: Path) -> None:
    root = cgroup_root(tmp_path, FRESH_MACHINE_CONTROLLERS)
    result, calls = run_step(tmp_path, root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls == [f"-t cgroup -o hugetlb cgroup {root / 'hugetlb'}"]
    assert (root / "hugetlb").is_dir()


def test_every_controller_left_on_the_v2_half_is_moved(tmp_path: Path) -> None:
    root = cgroup_root(tmp_path, "hugetlb rdma\n")
    _, calls = run_step(tmp_path, root)
    assert [call.split()[3] for call in calls] == ["hugetlb", "rdma"]


@pytest.mark.parametrize("content", ["", "\n", "  \n"])
def test_an_empty_v2_half_needs_nothing(tmp_path: Path, content: str) -> None:
    result, calls = run_step(tmp_path, cgroup_root(tmp_path, content))
    assert result.returncode == 0 and calls == []
    assert "nothing to move" in result.stdout


def test_a_controller_already_on_v1_is_left_alone(tmp_path: Path) -> None:
    result, calls = run_step(tmp_path, cgroup_root(tmp_path, "hugetlb\n", mounted=("hugetlb",)))
    assert result.returncode == 0 and calls == []
    assert "already" in result.stdout


def test_a_mount_that_fails_is_reported_not_hidden(tmp_path: Path) -> None:
    result, _ = run_step(tmp_path, cgroup_root(tmp_path, "hugetlb\n"), mount_fails=True)
    assert result.returncode == 1 and "could not move the hugetlb controller" in result.stdout


def test_ci_runs_this_step_on_the_real_cgroup_root() -> None:
    ci = (PROJECT_DIR / ".ci" / "run").read_text()
    assert "cgroup-hybrid-fix /sys/fs/cgroup" in ci
    assert "[ -s " not in ci, "cgroup files report size 0: a size test never sees their content"
