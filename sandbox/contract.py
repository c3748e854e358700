"""What the center and the agent agree on, in one place.

The agent cannot import the center's modules, so this one small module is shared instead: the
image carries it beside the agent (/opt/sandbox/contract.py), and the center imports it as
`sandbox.contract`. Standard library only, and nothing here runs at import but constants.
"""

from __future__ import annotations

# The statuses of a run, in the order of precedence when several apply.
STATUSES = ("ok", "error", "timeout", "oom", "output_limit")

# Image files: the extensions the agent looks at, and the types it may report (by content).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"})
# Each image type and the extension a stored image of that type is served under.
IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/svg+xml": "svg",
               "image/webp": "webp"}

# A job's limits when the job does not say (the center always does: config.py takes these as its defaults).
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
DEFAULT_MAX_IMAGES = 20
DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024

# The largest job (request body) the agent reads.
MAX_JOB_BYTES = 64 * 1024 * 1024
