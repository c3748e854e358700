"""The playground (/) and the API docs (/docs) in a real headless Chromium (Debian's), end to end."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
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
    expect(operations.filter(has_text="/runcode")).to_have_count(3)  # POST, GET and the refused HEAD
    expect(operations.filter(has_text="/image/{filename}")).to_have_count(2)
    assert f"{base}/openapi.json" in page.requested
    assert any(url.endswith("/docs/assets/swagger-ui-bundle.js") for url in page.requested)
    assert not off_host_requests(page)
    assert not page.console_errors

    operations.filter(has_text="/runcode").first.locator(".opblock-summary").click()
    expect(page.locator(".swagger-ui .responses-table").first).to_contain_text("504")
