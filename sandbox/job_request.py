"""The job the center sends (a run, or a session's cell), checked: its code, variables, limits and input files."""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
import sys
import threading
from typing import Any

from agent_options import AgentOptions, worker_environment
from contract import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_TIMEOUT_SECONDS,
    EGRESS_VARIABLES,
    ENV_NAME,
    MAX_ARG_STRLEN,
    PRELOADED_LIBRARIES,
    check_path,
    file_and_folder,
)

MAX_EXEC_SIZE = 6 * 1024 * 1024  # Linux: argument and environment strings with their pointers, at most


CONTEXT_ID = re.compile(r"[A-Za-z0-9-]{1,64}")


class Job:
    """A validated run request."""

    DEFAULTS: dict[str, Any] = {
        "language": "python", "variables": None, "timeout": DEFAULT_TIMEOUT_SECONDS,
        "max_output_bytes": DEFAULT_MAX_OUTPUT_BYTES, "max_images": DEFAULT_MAX_IMAGES,
        "max_image_bytes": DEFAULT_MAX_IMAGE_BYTES, "files": None, "max_files": DEFAULT_MAX_FILES,
        "max_file_bytes": DEFAULT_MAX_FILE_BYTES, "environment": None, "env": None, "context": None,
        "restart": False,
    }
    LIMITS = ("timeout", "max_output_bytes", "max_images", "max_image_bytes", "max_files", "max_file_bytes")

    def __init__(self, code: str, **settings: Any) -> None:
        settings = {**self.DEFAULTS, **settings}
        self.code = code
        self.language: str = settings["language"]
        self.variables: dict[str, Any] = settings["variables"] or {}
        self.timeout: float = settings["timeout"]
        self.max_output_bytes: int = settings["max_output_bytes"]
        self.max_images: int = settings["max_images"]
        self.max_image_bytes: int = settings["max_image_bytes"]
        self.max_files: int = settings["max_files"]
        self.max_file_bytes: int = settings["max_file_bytes"]
        # Input files as given; from_json checks them and turns them into (path, bytes).
        self.files: Any = settings["files"] or []
        # The egress variables (contract.EGRESS_VARIABLES) while the run may reach the network; {} else.
        self.environment: dict[str, str] = settings["environment"] or {}
        # A session's cell only: environment variables for this cell (E2B's envs), the interpreter state it
        # runs in (an E2B code context; None: the session's own) and whether that state starts afresh.
        self.env: dict[str, str] = settings["env"] or {}
        self.context: str | None = settings["context"]
        self.restart: bool = settings["restart"]

    def uses_preloaded_modules(self) -> bool:
        """Whether the program mentions a module the warm-up imports (or one built on them)."""
        return self.language == "python" and PRELOADED_LIBRARIES.search(self.code) is not None

    def program_variables(self) -> dict[str, Any]:
        """The variables as the program gets them: Python globals hold the JSON values; bash's
        environment holds strings, JSON for what is not one."""
        if self.language == "python":
            return self.variables
        return {name: value if isinstance(value, str) else json.dumps(value) for name, value in self.variables.items()}

    def check_bash_environment(self, options: AgentOptions) -> None:
        """ValueError naming the variable when bash's execve could not take the environment.

        Otherwise bash would not even start: exit status 127, not a word said.
        """
        environment = {**worker_environment(options), **self.environment, **self.env, **self.program_variables()}
        sizes = {}
        for name, value in environment.items():
            if "\0" in value:
                raise ValueError(f"variable {name} holds a NUL character, which an environment variable cannot")
            try:
                size = len(name.encode()) + 1 + len(value.encode()) + 1  # NAME=value and its NUL
            except UnicodeEncodeError:
                raise ValueError(f"variable {name} is not valid Unicode text (a lone surrogate)") from None
            if size > MAX_ARG_STRLEN:
                raise ValueError(f"variable {name} is too large for bash's environment: {size} bytes, "
                                 f"at most {MAX_ARG_STRLEN}")
            sizes[name] = size
        limit = min(os.sysconf("SC_ARG_MAX"), MAX_EXEC_SIZE) - 4096  # the command line's room
        total = sum(sizes.values()) + 8 * (len(sizes) + 1)
        if total > limit:
            largest = max(self.variables or sizes, key=sizes.__getitem__)
            raise ValueError(f"the variables are too large for bash's environment together: {total} bytes, "
                             f"at most {limit} (the largest is {largest})")

    @classmethod
    def from_json(cls, body: Any, options: AgentOptions) -> Job:
        """Check the center's request (absent fields take the defaults above); ValueError names the bad field.
        `options`: the agent's, for the size of bash's environment (see worker_environment)."""
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        job = cls(body.get("code"), **{name: body[name] for name in cls.DEFAULTS if name in body})
        if job.language not in ("python", "bash"):
            raise ValueError("language must be python or bash")
        if not isinstance(job.code, str):
            raise ValueError("code must be a string")
        if not isinstance(job.variables, dict) or not all(k.isidentifier() for k in job.variables):
            raise ValueError("variables must be an object keyed by identifiers")
        for name in cls.LIMITS:
            value = getattr(job, name)
            lowest_allowed = 0 if name in ("max_images", "max_files") else 1e-9  # 0: collect none
            # NaN compares false with everything (`NaN < lowest` let it through): finiteness is checked
            # first. A huge number would overflow a wait or a read later.
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or (isinstance(value, float) and not math.isfinite(value)) or value < lowest_allowed):
                raise ValueError(f"{name} must be a finite positive number")
            highest_allowed = threading.TIMEOUT_MAX if name == "timeout" else sys.maxsize
            if value > highest_allowed:
                raise ValueError(f"{name} must be at most {highest_allowed:.0f}")
        if not isinstance(job.environment, dict) or not all(
                name in EGRESS_VARIABLES and isinstance(value, str) and "\0" not in value
                for name, value in job.environment.items()):
            raise ValueError(f"environment may hold only {', '.join(EGRESS_VARIABLES)}, as strings")
        if not isinstance(job.env, dict) or not all(
                ENV_NAME.fullmatch(name) and isinstance(value, str) and "\0" not in value
                for name, value in job.env.items()):
            raise ValueError("env must be an object of variable names ([A-Za-z_][A-Za-z0-9_]*) to strings")
        if job.context is not None and (not isinstance(job.context, str) or not CONTEXT_ID.fullmatch(job.context)):
            raise ValueError("context must be an id of 1 to 64 letters, digits or dashes")
        if not isinstance(job.restart, bool):
            raise ValueError("restart must be true or false")
        if job.language == "bash":
            job.check_bash_environment(options)
        job.files = input_files(job.files)
        return job


def input_files(files: Any) -> list[tuple[str, bytes]]:
    """The job's `files` as (path, bytes); ValueError naming the bad entry (see contract.check_path)."""
    if not isinstance(files, list) or not all(isinstance(entry, dict) for entry in files):
        raise ValueError('files must be a list of {"path", "content_base64"} objects')
    if not files:
        return []
    checked: list[tuple[str, bytes]] = []
    for index, entry in enumerate(files):
        path, content = entry.get("path"), entry.get("content_base64")
        try:
            path = check_path(path)
        except ValueError as e:
            raise ValueError(f"files[{index}].path: {e}") from None
        if not isinstance(content, str):
            raise ValueError(f"files[{index}].content_base64 must be a string")
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"files[{index}].content_base64 is not valid base64") from None
        checked.append((path, data))
    paths = [path for path, _ in checked]
    if len(set(paths)) < len(paths):
        raise ValueError(f"files: {next(p for p in paths if paths.count(p) > 1)} is given twice")
    if (both := file_and_folder(paths)) is not None:
        raise ValueError(f"files: {both} is given as a file and as a folder")
    return checked
