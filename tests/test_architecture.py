"""The house's shape, checked: the agent's modules import one way, the client tools take nothing of the
center, and the root holds only what people run. (The center's own layers are import-linter contracts
in pyproject.toml, run by `make test`; the agent's modules import each other by their bare names, as
the image runs them, so their graph is read here.)"""

from __future__ import annotations

import ast
from pathlib import Path

from server.config import PROJECT_DIR

SANDBOX = PROJECT_DIR / "sandbox"
CENTER_PACKAGES = {"server", "center", "models", "build"}
ROOT_MODULES = {"center.py", "models.py", "build.py", "client.py", "mcp_server.py", "concurrent_test.py"}


def imported_names(path: Path) -> set[str]:
    """The top-level module names a file imports, at any depth of its code (lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def sandbox_graph() -> dict[str, set[str]]:
    """Each module of sandbox/ and the modules of sandbox/ it imports."""
    modules = {path.stem: path for path in SANDBOX.glob("*.py")}
    return {name: imported_names(path) & set(modules) - {name} for name, path in modules.items()}


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of the graph, or None."""
    state: dict[str, int] = {}
    trail: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        trail.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return trail[trail.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        trail.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_agents_modules_import_one_way() -> None:
    assert cycle_in(sandbox_graph()) is None, f"import circle in sandbox/: {' -> '.join(cycle_in(sandbox_graph()))}"


def test_a_circle_is_seen() -> None:
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b"}, "b": set()}) is None


def test_the_agent_takes_nothing_of_the_center() -> None:
    for path in SANDBOX.glob("*.py"):
        taken = imported_names(path) & CENTER_PACKAGES
        assert not taken, f"{path.name} imports {taken}"


def test_the_client_tools_speak_http_only() -> None:
    for name in ("client.py", "mcp_server.py", "concurrent_test.py"):
        taken = imported_names(PROJECT_DIR / name) & (CENTER_PACKAGES | {"sandbox"})
        assert not taken, f"{name} imports {taken} of the center"


def test_the_root_holds_only_what_people_run() -> None:
    modules = {path.name for path in PROJECT_DIR.glob("*.py")}
    assert modules == ROOT_MODULES, f"modules at the root besides those people run: {sorted(modules - ROOT_MODULES)}"
