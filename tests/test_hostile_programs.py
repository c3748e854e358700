"""Hostile programs against the agent itself: each tries to break, hang or bloat the report it must send.

Whatever the program does to its folder, its output or its own death, the agent answers with a
report (stdout, stderr, status, what it could not collect and why), and a job it refuses gets a
JSON 400 at once. Called directly, in containers started exactly as the center starts them.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from server.containers.docker_sandboxes import Sandbox

PNG = b"\x89PNG\r\n\x1a\n" + bytes(16)
Run = Callable[..., dict[str, Any]]


def images_by_name(report: dict[str, Any]) -> dict[str, tuple[str, bytes]]:
    """The report's images: name -> (MIME type, decoded bytes)."""
    return {image["name"]: (image["mime"], base64.b64decode(image["data"])) for image in report["images"]}


def skipped_by_name(report: dict[str, Any]) -> dict[str, str]:
    """The report's skipped files: name -> reason."""
    return {entry["name"]: entry["reason"] for entry in report["skipped"]}


def json_size(value: Any) -> int:
    """Bytes of a value's JSON as the agent sends it (UTF-8, only what JSON must escape)."""
    return len(json.dumps(value, ensure_ascii=False).encode())


# --- the working folder taken away ------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o000, 0o100, 0o300])
def test_a_program_that_locks_its_working_folder_still_gets_its_output(run_in_sandbox: Run, mode: int) -> None:
    code = (
        "import os, sys\n"
        f"open('plot.png', 'wb').write({PNG!r})\n"
        "print('before')\n"
        f"os.chmod('.', {mode:#o})\n"
        "print('locked', file=sys.stderr)\n"
    )
    report = run_in_sandbox(code)
    assert (report["status"], report["exit_code"]) == ("ok", 0), report
    assert (report["stdout"], report["stderr"]) == ("before\n", "locked\n")
    assert report["images"] == []
    assert report["skipped"] == [{"name": ".", "reason": "the working folder could not be read: Permission denied"}]


def test_a_program_that_empties_its_folder_and_plants_traps_gets_its_output(run_in_sandbox: Run) -> None:
    code = (
        "import os, shutil\n"
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2])\n"
        "plt.show()\n"
        "for name in os.listdir('.'):\n"  # everything it made, the figure too
        "    shutil.rmtree(name) if os.path.isdir(name) else os.remove(name)\n"
        f"open('locked.png', 'wb').write({PNG!r})\n"
        "os.chmod('locked.png', 0)\n"
        "os.mkfifo('fifo.png')\n"
        "os.mkdir('folder.png')\n"
        "os.mkdir('sealed')\n"
        f"open('sealed/inner.png', 'wb').write({PNG!r})\n"
        "os.chmod('sealed', 0)\n"
        "os.symlink('/etc/shadow', 'shadow.png')\n"
        f"open('good.png', 'wb').write({PNG!r})\n"
        "print('done')\n"
    )
    report = run_in_sandbox(code)
    assert (report["status"], report["stdout"]) == ("ok", "done\n"), report
    assert images_by_name(report) == {"good.png": ("image/png", PNG)}
    assert skipped_by_name(report) == {
        "locked.png": "could not be read: Permission denied",
        "fifo.png": "not a regular file: a FIFO",
        "folder.png": "not a regular file: a directory",
        "shadow.png": "not a regular file: a symbolic link (not followed)",
        "sealed": "could not be read: Permission denied",  # what is in it cannot come back: said so
    }


# --- images by their content -------------------------------------------------------------------

SVG_WITH_PROLOGUE = (
    '\ufeff<?xml version="1.0" encoding="UTF-8"?>\n<!-- made by hand -->\n'
    '<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd" '
    '[ <!ENTITY e "x>y"> ]>\n'
    '<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>'
)


def test_images_are_recognised_by_their_content_not_their_name(run_in_sandbox: Run) -> None:
    code = (
        "from PIL import Image\n"
        "Image.new('RGB', (8, 8), 'red').save('photo.png', format='JPEG')\n"  # a JPEG named .png
        "Image.new('RGB', (8, 8), 'blue').save('real.webp')\n"
        "Image.new('RGB', (8, 8), 'green').save('anim.gif')\n"
        f"open('drawing.svg', 'w', encoding='utf-8').write({SVG_WITH_PROLOGUE!r})\n"
        "open('page.svg', 'w').write('<html><body><svg></svg></body></html>')\n"
        "open('fake.png', 'wb').write(b'hello, not an image')\n"
        "open('empty.jpg', 'wb').close()\n"
        f"open('notes.txt', 'wb').write({PNG!r})\n"  # an image, but not by its name: not looked at
    )
    report = run_in_sandbox(code)
    assert report["status"] == "ok", report
    assert {name: mime for name, (mime, _) in images_by_name(report).items()} == {
        "photo.png": "image/jpeg", "real.webp": "image/webp", "anim.gif": "image/gif",
        "drawing.svg": "image/svg+xml",
    }
    not_an_image = "not a PNG, JPEG, GIF, WEBP or SVG image"
    assert skipped_by_name(report) == {"page.svg": not_an_image, "fake.png": not_an_image,
                                       "empty.jpg": not_an_image}


def test_images_come_in_the_order_they_were_made_and_over_the_cap_are_skipped(run_in_sandbox: Run) -> None:
    code = (
        "import os\n"
        "names = ['zebra.png', 'apple.png', 'figure_10.png', 'figure_2.png', 'figure_1.png', 'late.png']\n"
        "times = [1, 2, 3, 3, 3, 4]  # the figures in the same clock tick\n"
        "for name, t in zip(names, times):\n"
        f"    open(name, 'wb').write({PNG!r})\n"
        "    os.utime(name, ns=(t * 10**18, t * 10**18))\n"
    )
    report = run_in_sandbox(code, max_images=5)
    assert report["status"] == "ok", report
    assert [image["name"] for image in report["images"]] == [
        "zebra.png", "apple.png", "figure_1.png", "figure_2.png", "figure_10.png"]
    assert report["skipped"] == [{"name": "late.png", "reason": "more than 5 images"}]


def test_thousands_of_skipped_files_are_counted_not_listed(run_in_sandbox: Run) -> None:
    code = "for i in range(3000):\n    open(f'junk{i}.png', 'wb').write(b'junk')\n"
    report = run_in_sandbox(code)
    assert report["status"] == "ok", report
    assert len(report["skipped"]) == 51
    assert report["skipped"][-1]["reason"] == "2950 more skipped files are not listed"
    assert json_size(report["skipped"]) < 8 * 1024


# --- names are the program's bytes ---------------------------------------------------------------

def test_a_name_that_is_not_utf8_is_skipped_and_the_report_still_comes(run_in_sandbox: Run) -> None:
    code = (
        "printf '\\x89PNG\\r\\n\\x1a\\n' > $'bad\\xff.png'\n"
        "printf '\\x89PNG\\r\\n\\x1a\\n' > good.png\n"
        "echo written\n"
    )
    report = run_in_sandbox(code, language="bash")
    assert (report["status"], report["stdout"]) == ("ok", "written\n"), report
    assert images_by_name(report) == {"good.png": ("image/png", b"\x89PNG\r\n\x1a\n")}
    assert report["skipped"] == [{"name": "bad\\xff.png", "reason": "the name is not valid UTF-8"}]


def test_names_that_would_break_or_disguise_a_listing_are_skipped(run_in_sandbox: Run) -> None:
    code = (
        "import os\n"
        "names = ['line\\nbreak.png', 'tab\\t.png', 'bell\\x07.png', 'evil\\u202egnp.png', 'isolate\\u2066.png',\n"
        "         'caf\\u00e9.png', 'cafe\\u0301.png', '\\u56fe\\u8868.png', 'long' * 62 + '.png']\n"
        "for i, name in enumerate(names):\n"
        f"    open(name, 'wb').write({PNG!r})\n"
        "    os.utime(name, ns=((i + 1) * 10**18, (i + 1) * 10**18))\n"
    )
    report = run_in_sandbox(code)
    assert report["status"] == "ok", report
    assert list(images_by_name(report)) == ["caf\u00e9.png", "\u56fe\u8868.png", "long" * 62 + ".png"]
    assert report["skipped"] == [
        {"name": "line\\x0abreak.png", "reason": "the name has a control character"},
        {"name": "tab\\x09.png", "reason": "the name has a control character"},
        {"name": "bell\\x07.png", "reason": "the name has a control character"},
        {"name": "evil\\u202egnp.png", "reason": "the name has a bidirectional text control character"},
        {"name": "isolate\\u2066.png", "reason": "the name has a bidirectional text control character"},
        {"name": "cafe\u0301.png", "reason": "the same name as caf\u00e9.png once Unicode-normalised (NFC)"},
    ]


# --- a death the agent did not expect --------------------------------------------------------------

def test_a_program_killed_by_a_real_time_signal_gets_a_clean_report(sandbox: Sandbox) -> None:
    job = {"language": "python", "code": "import os\nprint('bye', flush=True)\nos.kill(os.getpid(), 40)",
           "variables": {}, "timeout": 30}
    started = time.monotonic()  # the sandbox is up already: the run alone is timed, not a container's start
    report = sandbox.run(job)
    assert time.monotonic() - started < 8, "at once, not at the end of the 30 s limit"
    assert (report["status"], report["exit_code"], report["stdout"]) == ("error", 128 + 40, "bye\n"), report
    assert report["error"] == "the program was killed by signal 40 (SIGRTMIN+6)"


def test_a_known_signal_is_named(run_in_sandbox: Run) -> None:
    report = run_in_sandbox("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    assert (report["status"], report["exit_code"]) == ("error", 128 + 11), report
    assert report["error"] == "the program was killed by signal 11 (SIGSEGV)"


# --- bash: a program and variables larger than a command line ------------------------------------

def test_a_200_kib_bash_program_runs(run_in_sandbox: Run) -> None:
    code = "".join(f"v{i}={i}\n" for i in range(25_000)) + ": " + "x" * 50_000 + "\necho \"last line $v24999\"\n"
    assert len(code.encode()) > 200 * 1024
    report = run_in_sandbox(code, language="bash")
    assert (report["status"], report["stdout"], report["stderr"]) == ("ok", "last line 24999\n", ""), report


def test_bash_errors_stay_readable_and_stdin_is_empty(run_in_sandbox: Run) -> None:
    code = "echo $0\nreadlink /proc/self/fd/0\ncat\nfoo\necho after\nexit 3"
    report = run_in_sandbox(code, language="bash")
    assert report["stdout"] == "bash\n/dev/null\nafter\n", report
    assert report["stderr"] == "bash: line 4: foo: command not found\n"
    assert (report["status"], report["exit_code"]) == ("error", 3)


@pytest.mark.parametrize(("variables", "message"), [
    ({"token": "a\x00b"}, "variable token holds a NUL character"),
    ({"blob": "x" * (200 * 1024)}, "variable blob is too large for bash's environment"),
    ({f"part{i}": "y" * (100 * 1024 + i) for i in range(40)},
     "the variables are too large for bash's environment together"),
])
def test_bash_variables_execve_cannot_carry_are_refused_at_once(sandbox: Sandbox, variables: dict[str, str],
                                                                 message: str) -> None:
    job = {"language": "bash", "code": "echo hi", "variables": variables, "timeout": 10}
    started = time.monotonic()
    status, body = sandbox.request("POST", "/run", job, timeout=30)
    # At once, well under the job's 10 s limit, with room for sending and parsing up to 4 MB of JSON on a
    # slow runner (milliseconds here).
    assert time.monotonic() - started < 5
    assert status == 400 and body["error"].startswith(message), body
    if "together" in message:
        assert body["error"].endswith("(the largest is part39)")
    # Refused, the sandbox is still unused and runs the next job.
    assert sandbox.run({"language": "bash", "code": "echo ok", "variables": {}, "timeout": 10})["stdout"] == "ok\n"


def test_bash_variables_as_large_as_execve_allows_work(run_in_sandbox: Run) -> None:
    # Each near the 128 KiB of one environment string, all together near the 2 MiB of all of them.
    variables: dict[str, Any] = {f"big{i:02}": "x" * (100 * 1024) for i in range(20)}
    variables.update(n=7, data={"k": [1, 2]})
    report = run_in_sandbox('echo "${#big00} ${#big19} $n $data"', language="bash", variables=variables)
    assert report["stdout"] == '102400 102400 7 {"k": [1, 2]}\n', report


# --- output amplification ------------------------------------------------------------------------

@pytest.mark.parametrize("byte", [b"\x00", b"\xff", b"\x1b"])
def test_output_that_escapes_badly_cannot_blow_up_the_answer(run_in_sandbox: Run, byte: bytes) -> None:
    code = (
        "import os\n"
        f"os.write(1, {byte!r} * 1024 * 1024)\n"
        f"os.write(2, {byte!r} * 1024 * 1024)\n"
        "raise SystemExit(1)\n"
    )
    limit = 1024 * 1024
    report = run_in_sandbox(code, max_output_bytes=limit)
    assert report["status"] == "output_limit", {k: v for k, v in report.items() if k not in ("stdout", "stderr")}
    assert json_size(report["stdout"]) - 2 + json_size(report["stderr"]) - 2 <= limit
    assert json_size(report) <= limit + 64 * 1024


def test_the_error_repeats_only_the_end_of_a_long_stderr(run_in_sandbox: Run) -> None:
    code = "import sys\nfor i in range(20000):\n    print(f'noise {i}\\x00', file=sys.stderr)\nsys.exit('the end')"
    report = run_in_sandbox(code)
    assert report["status"] == "error", report["error"]
    assert report["stderr"].endswith("noise 19999\x00\nthe end\n")
    assert json_size(report["error"]) <= 4096 + 16
    assert report["error"].endswith("noise 19999\x00\nthe end")


# --- requests the agent must refuse ----------------------------------------------------------------

@pytest.mark.parametrize("field", ["timeout", "max_output_bytes", "max_images", "max_image_bytes"])
def test_limits_that_are_not_finite_numbers_are_refused_at_once(sandbox: Sandbox, field: str) -> None:
    for value in (float("nan"), float("inf"), float("-inf"), 10**400):
        job = {"language": "python", "code": "print(1)", "variables": {}, "timeout": 5, field: value}
        started = time.monotonic()
        status, body = sandbox.request("POST", "/run", job, timeout=10)
        assert time.monotonic() - started < 1
        assert status == 400 and field in body["error"], (value, status, body)
    job = {"language": "python", "code": "print('still ready')", "variables": {}, "timeout": 5}
    assert sandbox.run(job)["stdout"] == "still ready\n"
