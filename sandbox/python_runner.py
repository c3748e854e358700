"""Python as a notebook runs it, in the worker's own process: the last expression's value shown, errors told."""

from __future__ import annotations

import sys
from typing import Any

import bash_runner
import import_hooks
import program_io
import rich_display
from contract import cut_result
from import_hooks import remember_source
from program_io import MagicFailed

EXIT_NOTE = "(exit() ends this cell, not the session: the interpreter and its state are kept)"
# The worker's own files: their frames around the program's are not the program's traceback (an interrupt
# lands in bash_runner's handler, a figure shown goes through program_io). notebook_habits' frames are
# kept: they run the program's magics.
OWN_FILES = frozenset({__file__, bash_runner.__file__, import_hooks.__file__, program_io.__file__,
                       rich_display.__file__})


def run_python(code: str, variables: dict[str, Any], namespace: dict[str, Any], count: int | None = None
               ) -> dict[str, Any]:
    """Run the program in `namespace`, its variables bound as globals; its record: {"exit": status, "result":
    repr of the last expression or None, "error"?: one line}. `count`: a session's cell (<cell N>, where exit()
    ends the cell only); None: the one job (<code>)."""
    filename = "<code>" if count is None else f"<cell {count}>"
    remember_source(filename, code)  # tracebacks then show the program's lines, as a notebook does
    namespace.update(variables)
    record: dict[str, Any] = {"exit": 0, "result": None}
    try:
        record["result"] = execute(code, namespace, filename)
    except SystemExit as e:
        a_number = e.code is None or isinstance(e.code, int)
        # As a script's exit status: exit(), sys.exit(0) and sys.exit(main()) returning 0 succeed.
        record["exit"] = (e.code or 0) if a_number else 1
        if count is not None:
            print(f"SystemExit: {'' if e.code is None else e.code}".rstrip() + f" {EXIT_NOTE}", file=sys.stderr)
        elif not a_number:
            print(e.code, file=sys.stderr)  # sys.exit("message"), as the interpreter prints it
    except MagicFailed as e:
        print(e, file=sys.stderr)
        record["exit"], record["error"] = e.status, str(e)
    except BaseException as e:  # noqa: BLE001 - whatever the program raised is its own error; an interrupt too
        print_traceback(e)
        record["exit"], record["error"] = 1, summarize(e, filename)
    save_figures()
    return record


def execute(code: str, namespace: dict[str, Any], filename: str) -> str | None:
    """Run code in namespace; return the repr of its last statement's value when that is an expression.

    The last expression is evaluated on its own, as a notebook does; line numbers are the code's.
    Code that is not Python only for its IPython magics runs as translate() makes it. Exceptions are
    the caller's. dont_inherit: this file's `from __future__` imports are not the program's.
    """
    import _ast  # ~0.5 ms: paid by Python runs only, not at every worker's start

    notebook = None
    try:
        tree = compile(code, filename, "exec", _ast.PyCF_ONLY_AST, dont_inherit=True)
    except SyntaxError:
        from notebook_habits import translate  # imported only when needed (see notebook_habits.py)

        # Magics are never Python: only code that does not compile is looked at (plain programs pay nothing).
        notebook = translate(code)
        if notebook is None:
            raise
    if notebook is None:
        return run_tree(tree, namespace, filename, {}, code)
    # Out of the `except` block: an error of the program is not shown "during handling of" the SyntaxError.
    if notebook.action is not None:
        notebook.action()
        return None
    tree = compile(notebook.code, filename, "exec", _ast.PyCF_ONLY_AST, dont_inherit=True)
    if notebook.cell_timer is None:
        return run_tree(tree, namespace, filename, notebook.timed, notebook.code)
    from notebook_habits import Timer

    with Timer(notebook.cell_timer):
        return run_tree(tree, namespace, filename, notebook.timed, notebook.code)


def run_tree(tree: Any, namespace: dict[str, Any], filename: str, timed: dict[int, str], source: str) -> str | None:
    """Execute a module's syntax tree (of `source`), its last expression evaluated apart (see execute);
    `timed`: %time lines. A last expression followed by ';' shows nothing, as in a notebook."""
    import _ast

    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], _ast.Expr) else None
    quiet = last is not None and followed_by_semicolon(source, last)
    last_timer = timed.pop(last.lineno, None) if last is not None and timed else None
    if timed:
        from notebook_habits import time_statements

        time_statements(tree, timed)
    exec(compile(tree, filename, "exec", dont_inherit=True), namespace)
    if last is None:
        return None
    expression = compile(_ast.Expression(last.value), filename, "eval", dont_inherit=True)
    if last_timer is None:
        value = eval(expression, namespace)
    else:
        from notebook_habits import Timer

        with Timer(last_timer):
            value = eval(expression, namespace)
    return None if quiet else shown_result(value)


def followed_by_semicolon(source: str, node: Any) -> bool:
    """Whether a ';' follows the statement in the source (plt.plot(x); shows no Line2D list)."""
    lines = source.splitlines()
    if not node.end_lineno or node.end_lineno > len(lines):
        return False
    rest = lines[node.end_lineno - 1].encode()[node.end_col_offset:]  # the offsets count UTF-8 bytes
    return rest.lstrip(b" \t").startswith(b";")


def shown_result(value: Any) -> str | None:
    """The text a notebook shows for a value: its repr, cut at MAX_RESULT_CHARS; None for None and for a
    figure (shown as an image instead). Its rich result (is_main_result) goes to the agent too."""
    if value is None:
        return None
    figure = sys.modules.get("matplotlib.figure")
    text = None if figure is not None and isinstance(value, figure.Figure) else cut_result(repr(value))
    rich_display.show(value, main=True)
    return text


def print_traceback(error: BaseException) -> None:
    """The error as Python prints it, from the program's code to where it was raised: the worker's frames
    before it and after it (the interrupt handler a timeout raises KeyboardInterrupt in) are left out."""
    import traceback  # imported only when needed: most programs never raise

    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_globals is globals():
        tb = tb.tb_next
    shown = traceback.TracebackException(type(error), error, tb)
    while shown.stack and shown.stack[-1].filename in OWN_FILES:
        shown.stack.pop()
    print("".join(shown.format()), end="", file=sys.stderr)


def summarize(error: BaseException, filename: str) -> str | None:
    """The report's short `error` (see notebook_habits.error_summary); None when it cannot be said."""
    try:
        from notebook_habits import error_summary

        return error_summary(error, filename)
    except Exception:  # noqa: BLE001 - an exception whose str() fails, say: the agent repeats stderr's end instead
        return None


def save_figures() -> None:
    """Open matplotlib figures become image files in the working folder (see capture_backend)."""
    if "matplotlib.pyplot" in sys.modules:
        try:
            import capture_backend
            capture_backend.save_open_figures()
        except Exception:  # noqa: BLE001 - a figure that cannot be drawn is reported, not fatal
            import traceback

            traceback.print_exc()
