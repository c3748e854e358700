"""The playground (/) and the API docs (/docs) in a real headless Chromium (Debian's), end to end.

One-shot runs, and session mode: cells that share state, uploads, the workspace's file list,
downloads that carry the bearer token, and the page's account of 409 and 410 answers.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from conftest import unavailable

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = pytest.mark.docker

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
RUN_TIMEOUT_MS = 60_000
SESSION_START_MS = 120_000  # a session may have to wait for a sandbox to start when the pool is drained
Cleanup = list[tuple[str, dict[str, str]]]  # (session URL, auth headers) to DELETE after a test
SALES_CSV = b"region,amount\nnorth,10\nsouth,20\neast,30\nwest,45\n"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium driven by playwright (no browser download)."""
    if sync_playwright is None:
        unavailable("playwright is not installed (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage) that records every URL it requests and every console error."""
    context = browser.new_context()
    tab = context.new_page()
    tab.requested = []  # type: ignore[attr-defined]
    tab.console_errors = []  # type: ignore[attr-defined]
    tab.on("request", lambda request: tab.requested.append(request.url))
    tab.on("console", lambda message: message.type == "error" and tab.console_errors.append(message.text))
    tab.on("pageerror", lambda error: tab.console_errors.append(str(error)))
    # Chromium's console names only the status of a failed call: name the call too.
    tab.on("response", lambda response: response.status >= 500 and tab.console_errors.append(
        f"{response.status} from {response.request.method} {response.url}"))
    yield tab
    context.close()


def off_host_requests(page: Any) -> list[str]:
    """Requested URLs that went anywhere but the test server on 127.0.0.1."""
    return [url for url in page.requested
            if urlsplit(url).scheme not in ("data", "blob") and urlsplit(url).hostname != "127.0.0.1"]


def type_program(page: Page, lines: list[str]) -> None:
    """Type a program into the editor as a person would; a line starting with a tab gets it from the Tab key."""
    editor = page.locator("#code")
    editor.fill("")
    editor.click()
    for line in lines:
        if line.startswith("\t"):
            page.keyboard.press("Tab")
            line = line[1:]
        page.keyboard.type(line)
        page.keyboard.press("Enter")


def test_playground_runs_a_plot_and_shows_its_output_and_image(live_server: Callable[..., str], page: Any) -> None:
    base = live_server()
    page.goto(f"{base}/")
    expect(page.locator("#status")).to_have_text("not run yet")
    type_program(page, [
        "import matplotlib.pyplot as plt",
        "squares = []",
        "for x in range(5):",
        "\tsquares.append(x * x)",
        "plt.plot(range(5), squares)",
        "plt.title('squares')",
        "print('squares:', squares)",
    ])
    page.select_option("#language", "python")
    page.click("#run")

    expect(page.locator("#status")).to_have_text("ok", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#stdout")).to_have_text("squares: [0, 1, 4, 9, 16]\n")
    expect(page.locator("#stderr")).to_have_text("")
    expect(page.locator("#error")).to_have_text("")
    expect(page.locator("#exit-code")).to_have_text("0")
    expect(page.locator("#http-status")).to_have_text(re.compile(r"^200\b"))
    expect(page.locator("#duration")).to_have_text(re.compile(r"^\d+\.\d ms$"))
    image = page.locator("#images img")
    expect(image).to_have_count(1)
    expect(image).to_have_attribute("src", re.compile(rf"^{re.escape(base)}/image/[A-Za-z0-9_-]{{32}}\.png$"))
    expect(image).to_have_attribute("alt", "figure_1.png")
    page.wait_for_function("() => { const img = document.querySelector('#images img');"
                           " return img.complete && img.naturalWidth > 0; }", timeout=10_000)
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") >= [100, 100]
    assert any("/image/" in url for url in page.requested), "the image was never fetched"
    assert not off_host_requests(page)
    assert not page.console_errors


def test_playground_shows_output_live_while_the_program_runs(waitress_server: Callable[..., str], page: Any) -> None:
    base = waitress_server()
    page.goto(f"{base}/")
    page.fill("#code", "import time\nprint('first line', flush=True)\ntime.sleep(6)\nprint('done')")
    page.click("#run")
    # The first line is on the page while the program still sleeps: the run is not over yet.
    expect(page.locator("#stdout")).to_have_text("first line\n", timeout=RUN_TIMEOUT_MS)
    assert page.locator("#status").text_content() == "running…"
    assert page.locator("#http-status").text_content().startswith("200")
    expect(page.locator("#status")).to_have_text("ok", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#stdout")).to_have_text("first line\ndone\n")
    assert not page.console_errors


def test_playground_shows_a_dataframe_as_a_table_in_a_sandboxed_frame(live_server: Callable[..., str],
                                                                    page: Any) -> None:
    base = live_server()
    page.goto(f"{base}/")
    page.fill("#code", 'import pandas as pd\npd.DataFrame({"a": [1, 2], "b": [3, 4]})')
    page.click("#run")
    expect(page.locator("#status")).to_have_text("ok", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#result")).to_contain_text("a  b")
    shown = page.locator("#results .display")
    expect(shown).to_have_count(1)  # the value, once: its text is the result above
    expect(shown).to_have_class(re.compile(r"\bmain\b"))
    expect(shown.locator(".display-head")).to_have_text("Out · text/html")
    frame_element = shown.locator("iframe")
    expect(frame_element).to_have_attribute("sandbox", "")  # no script, no same-origin: it cannot reach the page
    assert frame_element.get_attribute("src") is None and "<table" in frame_element.get_attribute("srcdoc")
    frame = frame_element.element_handle().content_frame()
    assert frame is not None and frame.url == "about:srcdoc"
    expect(frame.locator("table")).to_have_count(1)
    expect(frame.locator("table thead th")).to_have_text(["", "a", "b"])
    expect(frame.locator("table tbody th")).to_have_text(["0", "1"])
    expect(frame.locator("table tbody td")).to_have_text(["1", "3", "2", "4"])
    expect(frame.locator("table")).to_be_visible()
    shown.scroll_into_view_if_needed()
    page.wait_for_timeout(300)  # the frame's own paint
    page.screenshot(path="/tmp/playground_table.png", full_page=True)
    assert not off_host_requests(page)
    assert not page.console_errors


def test_playground_renders_each_kind_of_display_safely_and_as_it_comes(waitress_server: Callable[..., str],
                                                                        page: Any) -> None:
    base = waitress_server()
    page.goto(f"{base}/")
    page.fill("#code", "\n".join([
        "import time",
        "from IPython.display import HTML, JSON, SVG, Latex, Markdown, display",
        "import matplotlib.pyplot as plt",
        "display(Markdown('# Early **news**\\n\\n- <img src=x onerror=alert(1)>\\n- [docs](https://example.org/)'))",
        "time.sleep(6)",
        "display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"40\" height=\"30\">"
        "<rect width=\"40\" height=\"30\" fill=\"teal\"/></svg>'))",
        "display(Latex(r'$\\alpha^2$'))",
        "display(JSON({'k': [1, 2]}))",
        "display(HTML('<p>from html</p><script>parent.document.title = \"owned\"</script>'))",
        "plt.plot([1, 2, 3], [1, 4, 9])",
        "plt.title('squares')",
    ]))
    page.click("#run")
    # The first display is on the page while the program still sleeps.
    markdown = page.locator("#results .markdown")
    expect(markdown.locator("h1")).to_have_text("Early news", timeout=RUN_TIMEOUT_MS)
    assert page.locator("#status").text_content() == "running…"
    expect(page.locator("#status")).to_have_text("ok", timeout=RUN_TIMEOUT_MS)

    expect(page.locator("#results .display-head")).to_have_text([
        "display · text/markdown", "display · image/svg+xml", "display · text/latex", "display · application/json",
        "display · text/html", "display · chart"])
    expect(markdown.locator("strong")).to_have_text("news")
    expect(markdown.locator("li").first).to_have_text("<img src=x onerror=alert(1)>")  # text, not an element
    expect(markdown.locator("img")).to_have_count(0)
    expect(markdown.locator("a")).to_have_attribute("href", "https://example.org/")
    svg = page.locator('#results .display[data-mime="image/svg+xml"] img')
    expect(svg).to_have_attribute("src", re.compile(r"^data:image/svg\+xml;base64,"))
    page.wait_for_function("img => img.complete && img.naturalWidth === 40", arg=svg.element_handle(),
                           timeout=10_000)
    expect(page.locator("#results pre.latex")).to_have_text("$\\alpha^2$")
    json_shown = page.locator("#results pre.json").text_content()
    assert json_shown is not None and json.loads(json_shown) == {"k": [1, 2]}
    html = page.locator('#results .display[data-mime="text/html"] iframe')
    expect(html).to_have_attribute("sandbox", "")
    expect(html.element_handle().content_frame().locator("p")).to_have_text("from html")
    chart = page.locator("#results details.chart")
    expect(chart.locator("summary")).to_have_text("chart data (line: squares)")
    chart.locator("summary").click()
    assert json.loads(chart.locator("pre").text_content())["type"] == "line"
    expect(page.locator("#images img")).to_have_count(1)  # the figure is shown once, among the images
    expect(page.locator("#results img")).to_have_count(1)  # the SVG
    assert page.title() == "Code Interpreter playground", "the HTML's script never ran"
    # Chromium says it blocked the HTML's script; nothing else may fail.
    assert [e for e in page.console_errors if "Blocked script execution in 'about:srcdoc'" not in e] == []
    assert not off_host_requests(page)


def test_playground_shows_a_failed_bash_run_with_variables(live_server: Callable[..., str], page: Any) -> None:
    base = live_server()
    page.goto(f"{base}/")
    page.select_option("#language", "bash")
    page.fill("#code", 'echo "hello $NAME, $((COUNT * 2))"\necho "oops" >&2\nexit 3')
    page.fill("#variables", '{"NAME": "playground", ')
    page.click("#run")
    expect(page.locator("#status")).to_have_text("not sent")
    expect(page.locator("#error")).to_contain_text("Variables are not valid JSON")
    assert not any(url.endswith("/runcode") for url in page.requested), "a broken variables field was sent"

    page.fill("#variables", '{"NAME": "playground", "COUNT": 21}')
    page.keyboard.press("Control+Enter")
    expect(page.locator("#status")).to_have_text("error", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#stdout")).to_have_text("hello playground, 42\n")
    expect(page.locator("#stderr")).to_have_text("oops\n")
    expect(page.locator("#exit-code")).to_have_text("3")
    expect(page.locator("#error")).not_to_have_text("")
    expect(page.locator("#images")).to_have_text("none")
    expect(page.locator("#images img")).to_have_count(0)


def test_playground_sends_the_token_and_shows_a_401(live_server: Callable[..., str], page: Any) -> None:
    base = live_server(auth_tokens=["s3cret"])
    sent: list[str | None] = []
    page.on("request", lambda request: request.url.endswith("/runcode")
            and sent.append(request.headers.get("authorization")))
    page.goto(f"{base}/")
    page.fill("#code", "print(6 * 7)")
    page.click("#run")
    expect(page.locator("#status")).to_have_text("HTTP 401", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#error")).to_contain_text("a bearer token is required")
    expect(page.locator("#stdout")).to_have_text("")

    page.fill("#token", "s3cret")
    page.click("#run")
    expect(page.locator("#status")).to_have_text("ok", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#stdout")).to_have_text("42\n")
    assert sent == [None, "Bearer s3cret"]

    page.reload()  # the token stays for this tab's session
    expect(page.locator("#token")).to_have_value("s3cret")


def test_docs_render_the_api_from_packaged_assets_only(live_server: Callable[..., str], page: Any) -> None:
    base = live_server()
    page.goto(f"{base}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Code Interpreter API", timeout=30_000)
    operations = page.locator(".swagger-ui .opblock")

    def on(path: str) -> Any:
        """The operations on exactly this path (/runcode must not match /sessions/{session_id}/runcode)."""
        return operations.filter(has=page.locator(f'.opblock-summary-path[data-path="{path}"]'))

    expect(on("/runcode")).to_have_count(3)  # POST, GET and the refused HEAD
    expect(on("/image/{filename}")).to_have_count(2)
    expect(on("/sessions")).to_have_count(2)  # GET the list, POST a new one
    expect(on("/sessions/{session_id}/runcode")).to_have_count(1)
    expect(on("/sessions/{session_id}/files")).to_have_count(2)  # GET the list, POST an upload
    assert f"{base}/openapi.json" in page.requested
    assert any(url.endswith("/docs/assets/swagger-ui-bundle.js") for url in page.requested)
    assert not off_host_requests(page)
    assert not page.console_errors

    on("/runcode").first.locator(".opblock-summary").click()
    expect(page.locator(".swagger-ui .responses-table").first).to_contain_text("504")


@pytest.fixture
def session_cleanup() -> Iterator[Cleanup]:
    """Session URLs (with their auth headers) to DELETE after the test, so that a failing test leaks none."""
    started: Cleanup = []
    yield started
    for url, headers in started:
        try:
            requests.delete(url, headers=headers, timeout=30)
        except requests.RequestException:
            pass  # the server is gone already: the deployment's leftovers are removed at the end of the run


def start_session(page: Page, cleanup: Cleanup, base: str,
                  headers: dict[str, str] | None = None) -> str:
    """Click "Start session", wait until the page is in session mode and return the session's id."""
    page.click("#session-start")
    state = page.locator("#session-state")
    expect(state).to_contain_text("idle", timeout=SESSION_START_MS)
    expect(page.locator("#session-panel")).to_be_visible()
    expect(page.locator("#run")).to_have_text("Run cell")
    expect(page.locator("#session-error")).to_have_text("")
    session_id = state.get_attribute("data-session-id")
    assert session_id and len(session_id) >= 32
    cleanup.append((f"{base}/sessions/{session_id}", headers or {}))
    return session_id


def run_cell(page: Page, code: str, status: str = "ok") -> None:
    """Type a cell into the editor, run it and wait for its status."""
    page.fill("#code", code)
    page.click("#run")
    expect(page.locator("#status")).to_have_text(status, timeout=RUN_TIMEOUT_MS)


def end_session(page: Page, base: str, session_id: str, headers: dict[str, str] | None = None) -> None:
    """Click "End session" and check that the page and the server agree it has ended."""
    page.click("#session-end")
    expect(page.locator("#session-state")).to_contain_text("Session ended: deleted", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#run")).to_have_text("Run")
    expect(page.locator("#session-start")).to_be_visible()
    answer = requests.get(f"{base}/sessions/{session_id}", headers=headers or {}, timeout=30)
    assert answer.status_code == 410, answer.text


def test_playground_session_keeps_state_between_cells(live_server: Callable[..., str], page: Any,
                                                     session_cleanup: Cleanup) -> None:
    base = live_server()
    page.goto(f"{base}/")
    session_id = start_session(page, session_cleanup, base)

    run_cell(page, "x = 21")
    expect(page.locator("#execution-count")).to_have_text("1")
    expect(page.locator("#result")).to_have_text("")
    run_cell(page, "x * 2")
    expect(page.locator("#result")).to_have_text("42")
    expect(page.locator("#result-label")).to_have_text("Out[2]")
    expect(page.locator("#execution-count")).to_have_text("2")
    expect(page.locator("#http-status")).to_have_text(re.compile(r"^200\b"))

    cells = page.locator("#cells .cell")
    expect(cells).to_have_count(2)
    expect(cells.nth(0).locator(".prompt").first).to_have_text("In [1]:")
    expect(cells.nth(0).locator(".cell-code")).to_have_text("x = 21")
    expect(cells.nth(0).locator(".cell-result")).to_have_count(0)
    expect(cells.nth(1).locator(".prompt.out")).to_have_text("Out[2]:")
    expect(cells.nth(1).locator(".cell-result")).to_have_text("42")
    expect(page.locator("#session-state")).to_contain_text("2 cells run")

    run_cell(page, "print('half', x)\n1 / 0", status="error")  # an error keeps the state
    expect(page.locator("#stdout")).to_have_text("half 21\n")
    expect(page.locator("#error")).to_contain_text("ZeroDivisionError")
    expect(cells.nth(2).locator(".cell-status")).to_have_text("error")
    run_cell(page, "x + 1")
    expect(page.locator("#result")).to_have_text("22")
    expect(page.locator("#result-label")).to_have_text("Out[4]")

    end_session(page, base, session_id)
    run_cell(page, "print('x' in globals())")  # back to one-shot runs: a fresh interpreter
    expect(page.locator("#stdout")).to_have_text("False\n")
    expect(page.locator("#execution-count")).to_have_text("")
    assert any(url.endswith(f"/sessions/{session_id}/runcode") for url in page.requested)
    assert page.requested[-1].endswith("/runcode") and "/sessions/" not in page.requested[-1]
    assert not off_host_requests(page)
    assert not page.console_errors


def test_playground_session_uploads_lists_and_downloads_files(live_server: Callable[..., str], page: Any,
                                                              tmp_path: Path, session_cleanup: Cleanup) -> None:
    base = live_server(auth_tokens=["s3cret"])
    auth: dict[str, str | None] = {}
    page.on("request", lambda request: "/files" in request.url
            and auth.setdefault(f"{request.method} {request.url}", request.headers.get("authorization")))
    page.goto(f"{base}/")
    page.fill("#token", "s3cret")
    session_id = start_session(page, session_cleanup, base, {"Authorization": "Bearer s3cret"})
    expect(page.locator("#files-body")).to_have_text("no files yet", timeout=RUN_TIMEOUT_MS)

    page.set_input_files("#upload-input", files=[
        {"name": "sales.csv", "mimeType": "text/csv", "buffer": SALES_CSV},
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"uploaded from the playground\n"},
    ])
    page.fill("#upload-folder", "/data/")
    page.click("#upload")
    expect(page.locator("#upload-message")).to_have_text(
        f"Uploaded data/sales.csv ({len(SALES_CSV)} B), data/notes.txt (29 B).", timeout=RUN_TIMEOUT_MS)
    links = page.locator("#files-body a.file-link")
    # The list comes with a request of its own (to the sandbox's agent): as long as any server answer may take.
    expect(links).to_have_text(["data/notes.txt", "data/sales.csv"], timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#upload-input")).to_have_value("")

    run_cell(page, "import pandas as pd\n"
                   "df = pd.read_csv('data/sales.csv')\n"
                   "df[df.amount > 15].to_csv('big.csv', index=False)\n"
                   "int(df['amount'].sum())")
    expect(page.locator("#result")).to_have_text("105")
    expect(links).to_have_text(["big.csv", "data/notes.txt", "data/sales.csv"], timeout=RUN_TIMEOUT_MS)
    row = page.locator("#files-body tr", has=page.locator("a", has_text="data/sales.csv"))
    expect(row.locator("td.size")).to_have_text(f"{len(SALES_CSV)} B")
    expect(row.locator("td.size")).to_have_attribute("title", f"{len(SALES_CSV)} bytes")
    expect(row.locator("td.modified")).not_to_have_text("")
    sales = links.filter(has_text="data/sales.csv")
    expect(sales).to_have_attribute("href", f"/sessions/{session_id}/files/data/sales.csv")
    expect(sales).to_have_attribute("download", "sales.csv")

    for name, wanted in (("data/sales.csv", SALES_CSV), ("big.csv", b"region,amount\nsouth,20\neast,30\nwest,45\n")):
        with page.expect_download(timeout=RUN_TIMEOUT_MS) as started:
            links.filter(has_text=name).click()
        download = started.value
        assert download.suggested_filename == name.rsplit("/", 1)[-1]
        saved = tmp_path / download.suggested_filename
        download.save_as(saved)
        assert saved.read_bytes() == wanted
    expect(page.locator("#session-error")).to_have_text("")
    file_calls = {call: header for call, header in auth.items() if f"/sessions/{session_id}/files" in call}
    assert f"GET {base}/sessions/{session_id}/files/data/sales.csv" in file_calls
    assert f"POST {base}/sessions/{session_id}/files" in file_calls
    assert set(file_calls.values()) == {"Bearer s3cret"}, "every file call carries the token"

    end_session(page, base, session_id, {"Authorization": "Bearer s3cret"})
    expect(page.locator("#files-body tr")).to_have_count(0)
    expect(page.locator("#upload")).to_be_disabled()
    assert not off_host_requests(page)
    assert not page.console_errors


def test_playground_session_shows_409_and_410(live_server: Callable[..., str], page: Any,
                                             session_cleanup: Cleanup) -> None:
    base = live_server(timeout_seconds=60)  # the other client's cell below may run as long as the page takes
    page.goto(f"{base}/")
    session_id = start_session(page, session_cleanup, base)
    run_cell(page, "state = 'kept'")

    # Another client keeps the session busy until the test lets its cell go (it waits for a file, uploaded
    # through the API), however long the page takes on a slow runner: the page's cell answers 409 and the
    # session goes on.
    started = threading.Event()
    answers: list[requests.Response] = []
    until_released = "import os, time\nwhile not os.path.exists('release'):\n    time.sleep(0.05)\n'slept'"

    def long_cell() -> None:
        started.set()
        answers.append(requests.post(f"{base}/sessions/{session_id}/runcode", timeout=120,
                                     json={"code": until_released, "languageType": "python"}))

    other = threading.Thread(target=long_cell)
    other.start()
    started.wait()
    try:
        assert wait_busy(base, session_id), "the other client's cell never ran"
        run_cell(page, "state", status="HTTP 409")
        expect(page.locator("#http-status")).to_have_text(re.compile(r"^409\b"))
        expect(page.locator("#error")).to_contain_text("already running")
        expect(page.locator("#error")).to_contain_text("Wait for the running cell to finish")
        expect(page.locator("#run")).to_have_text("Run cell")
    finally:
        released = requests.post(f"{base}/sessions/{session_id}/files", files={"file": ("release", b"")}, timeout=60)
    assert released.status_code == 201, released.text
    other.join()
    assert answers[0].status_code == 200 and answers[0].json()["result"] == "'slept'"
    # After a cell the page reads the session and its files: the DELETE below must come after those,
    # or they, not the next cell, find it ended (the page then goes back to one-shot runs by itself).
    session_url = f"{base}/sessions/{session_id}"
    with page.expect_response(lambda r: r.url == session_url and r.request.method == "GET", timeout=RUN_TIMEOUT_MS), \
            page.expect_response(lambda r: r.url == f"{session_url}/files", timeout=RUN_TIMEOUT_MS):
        run_cell(page, "state")
    expect(page.locator("#result")).to_have_text("'kept'")

    # The session is deleted behind the page's back: its next cell answers 410 and the page lets it go.
    assert requests.delete(f"{base}/sessions/{session_id}", timeout=30).status_code == 204
    run_cell(page, "state", status="HTTP 410")
    expect(page.locator("#error")).to_contain_text("deleted")
    expect(page.locator("#error")).to_contain_text("Start a new session")
    expect(page.locator("#session-state")).to_contain_text("Session ended")
    expect(page.locator("#run")).to_have_text("Run")
    expect(page.locator("#session-start")).to_be_visible()
    page.reload()  # an ended session is not resumed
    expect(page.locator("#session-start")).to_be_visible()
    expect(page.locator("#session-panel")).to_be_hidden()
    # Chromium logs each error answer as a failed resource (the 409 and the 410 at least; on a slow
    # runner the page's own state check may meet one more); the page itself must not fail.
    assert [e for e in page.console_errors if "Failed to load resource" not in e] == []
    assert len(page.console_errors) >= 2


def test_playground_resumes_its_session_after_a_reload(live_server: Callable[..., str], page: Any,
                                                      session_cleanup: Cleanup) -> None:
    base = live_server()
    page.goto(f"{base}/")
    session_id = start_session(page, session_cleanup, base)
    run_cell(page, "y = 6")
    page.reload()
    expect(page.locator("#session-state")).to_have_attribute("data-session-id", session_id, timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#cells")).to_contain_text("Resumed after a reload")
    run_cell(page, "y * 7")
    expect(page.locator("#result")).to_have_text("42")
    expect(page.locator("#result-label")).to_have_text("Out[2]")
    end_session(page, base, session_id)


def wait_busy(base: str, session_id: str, timeout: float = 30) -> bool:
    """Poll the session until it says a cell is running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if requests.get(f"{base}/sessions/{session_id}", timeout=10).json().get("status") == "busy":
            return True
        time.sleep(0.05)
    return False
