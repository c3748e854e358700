"""How the agent and its helpers open the working folder and the folders below it: never through a symbolic link."""

from __future__ import annotations

import os
import stat

from contract import WORKSPACE

# A folder opened to read its entries; a symbolic link planted in its place is refused, not followed.
LISTED_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A folder opened only to reach what it holds (O_PATH: no permission to read it needed), never through a link.
PASSED_FOLDER = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_workspace() -> int:
    """The working folder itself, opened to read its entries (it is a mount point: no link can stand there)."""
    return os.open(WORKSPACE, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_folder(name: str | bytes, dir_fd: int) -> int:
    """A folder of the folder `dir_fd`, opened to read its entries; OSError when it is a symbolic link."""
    return os.open(name, LISTED_FOLDER, dir_fd=dir_fd)


def pass_folder(name: str | bytes, dir_fd: int | None = None) -> int:
    """A folder on the way to a path (of the folder `dir_fd`, when given), opened with O_PATH; OSError when it
    is a symbolic link."""
    return os.open(name, PASSED_FOLDER, dir_fd=dir_fd)


def file_kind(mode: int) -> str:
    """'a directory', 'a FIFO', ... for a file that is not a regular one."""
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link (not followed)"),
             (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "a device or special file")
