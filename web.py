"""Pages for people and tools: the playground (/), the API docs (/docs) and the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint

blueprint = Blueprint("web", __name__)
