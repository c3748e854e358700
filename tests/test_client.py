"""client.py against a real center (real HTTP, Docker sandboxes, database): every method and every typed error."""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import free_port, wait_until

from client import (
    BadRequestError,
    CenterUnreachableError,
    Client,
    ClientError,
    ConflictError,
    ForbiddenError,
    GoneError,
    InsufficientStorageError,
    InvalidArgumentError,
    NotFoundError,
    PayloadTooLargeError,
    RunResult,
    ServerError,
    ServiceUnavailableError,
    Session,
    UnauthorizedError,
    error_for,
    workspace_path,
)
from sandbox.contract import check_path

TOKEN, OTHER_TOKEN = "client-token", "other-token"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def center_url(live_server: Callable[..., str]) -> str:
    """A real center over HTTP that takes two tokens."""
    return live_server(auth_tokens=(TOKEN, OTHER_TOKEN))


@pytest.fixture
def center(center_url: str) -> Iterator[Client]:
    """A client of that center with the first token."""
    with Client(center_url, token=TOKEN, timeout=120) as client:
        yield client


@pytest.fixture
def session(center: Client) -> Iterator[Session]:
    """A fresh session, ended afterwards."""
    with center.session() as s:
        yield s


# --- one-shot runs ------------------------------------------------------------------------------

def test_run_gives_output_value_and_status(center: Client) -> None:
    result = center.run("print('hello')\n6 * 7")
    assert isinstance(result, RunResult)
    assert (result.stdout, result.stderr, result.exit_code, result.status) == ("hello\n", "", 0, "ok")
    assert result.ok and result.result == "42" and result.error is None
    assert result.images == {} and result.files == {} and result.skipped == []
    assert result["output"] == "hello\n" and result.get("nope", "default") == "default", "dict-like by wire name"
    assert center.healthy()


def test_run_with_files_variables_and_bash(center: Client) -> None:
    code = ("import pandas as pd\ndf = pd.read_csv('data.csv')\n"
            "df.assign(total=df.a * factor).to_csv('report.csv', index=False)\nprint(len(df))")
    result = center.run(code, files={"data.csv": "a,b\n1,2\n3,4\n"}, variables={"factor": 10})
    assert result.stdout == "2\n" and list(result.files) == ["report.csv"]
    assert center.fetch(result.files["report.csv"]) == b"a,b,total\n1,2,10\n3,4,30\n"
    bash = center.run('echo "$GREETING $COUNT"; cat in.bin | wc -c', language="bash",
                      variables={"GREETING": "hi", "COUNT": 3}, files={"in.bin": bytes(range(256))})
    assert bash.stdout.split() == ["hi", "3", "256"]


def test_a_plot_comes_back_as_an_image_url(center: Client) -> None:
    result = center.run("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])")
    assert list(result.images) == ["figure_1.png"]
    assert result.images["figure_1.png"].startswith(center.url + "/image/")
    assert center.fetch(result.images["figure_1.png"]).startswith(PNG_SIGNATURE)


def test_failures_and_timeouts_are_results_not_exceptions(center: Client) -> None:
    failed = center.run("values = []\nprint('before')\nsum(values) / len(values)")
    assert failed.status == "error" and not failed.ok and failed.exit_code != 0
    assert failed.stdout == "before\n" and "ZeroDivisionError" in failed.error and "Traceback" in failed.stderr
    slow = center.run("import time\nprint('started', flush=True)\ntime.sleep(60)", timeout=1)
    assert slow.status == "timeout" and slow.http_status == 504
    assert slow.stdout == "started\n" and "time limit" in slow.error


# --- rich results (what a notebook displays) ---------------------------------------------------------

def test_a_dataframe_value_comes_back_as_an_html_table(center: Client) -> None:
    result = center.run("import pandas as pd\npd.DataFrame({'city': ['Oslo', 'Lima'], 'people': [709, 10092]})")
    assert result.ok, result.error
    main = result.main_result
    assert main is not None and main["is_main_result"] is True, result.results
    html = main["data"]["text/html"]
    assert "<table" in html and all(value in html for value in ("city", "people", "Oslo", "Lima", "709", "10092"))
    assert main["data"]["text/plain"] == result.result, "the text form is the result's"
    assert result.formats("text/html") == [html] and result.results == result["results"]
    assert center.run("print('no value')").results == [], "a run that displays nothing has no bundles"


def test_displays_come_in_order_and_stream_as_they_are_made(center: Client) -> None:
    code = ("from IPython.display import HTML, JSON, Markdown, display\n"
            "display(Markdown('# first'))\ndisplay(HTML('<b>second</b>'))\ndisplay(JSON({'third': [3]}))\n'last'")
    plain = center.run(code)
    assert [(bundle["is_main_result"], bundle["data"].get("text/markdown"), bundle["data"].get("text/html"),
             bundle["data"].get("application/json")) for bundle in plain.results] == [
        (False, "# first", None, None), (False, None, "<b>second</b>", None), (False, None, None, {"third": [3]}),
        (True, None, None, None)]
    assert plain.main_result["data"]["text/plain"] == "'last'" == plain.result
    assert all("text/plain" in bundle["data"] for bundle in plain.results)
    events: list[dict] = []
    displays: list[dict] = []
    streamed = center.run(code, on_event=events.append, on_display=displays.append)
    kinds = [event["type"] for event in events if event["type"] != "keepalive"]
    assert kinds.count("display") == 4 and kinds[-1] == "result" and kinds.index("result") > max(
        i for i, kind in enumerate(kinds) if kind == "display"), kinds
    assert displays == streamed.results == plain.results, "each display once, as the result lists it"


def test_display_images_are_links_or_inline_base64(center: Client) -> None:
    code = ("import io\nfrom PIL import Image as Picture\nfrom IPython.display import Image, display\n"
            "buffer = io.BytesIO()\nPicture.new('RGB', (8, 8), 'red').save(buffer, 'PNG')\n"
            "display(Image(data=buffer.getvalue()))")
    linked = center.run(code)
    (bundle,) = [b for b in linked.results if "image/png" in b["data"]]
    assert bundle["data"]["image/png"].startswith(center.url + "/image/"), bundle
    png = center.fetch(bundle["data"]["image/png"])
    assert png.startswith(PNG_SIGNATURE)
    inline = center.run(code, inline=True)
    (inlined,) = [b for b in inline.results if "image/png" in b["data"]]
    assert base64.b64decode(inlined["data"]["image/png"], validate=True).startswith(PNG_SIGNATURE)


def test_a_session_cell_gives_its_displays(session: Session) -> None:
    session.run("import pandas as pd\ndf = pd.DataFrame({'x': [1, 2]})")
    cell = session.run("from IPython.display import Markdown, display\ndisplay(Markdown('**sum**'))\nint(df.x.sum())")
    assert [bundle["data"].get("text/markdown") for bundle in cell.results] == ["**sum**", None]
    assert cell.main_result["data"]["text/plain"] == "3" == cell.result and cell.execution_count == 2


# --- sessions -----------------------------------------------------------------------------------

def test_a_session_keeps_state_and_files(center: Client, tmp_path: Path) -> None:
    local = tmp_path / "cities.csv"
    local.write_text("city,people\nOslo,709\nLima,10092\n")
    with center.session() as s:
        assert len(s.id) >= 32 and s.info["status"] == "idle"
        assert s.upload(local) == [{"path": "cities.csv", "size": local.stat().st_size}]
        assert s.upload("data/notes.txt", "hello") == [{"path": "data/notes.txt", "size": 5}]
        assert s.upload("raw.bin", b"\x00\x01") == [{"path": "raw.bin", "size": 2}]
        first = s.run("import pandas as pd\ndf = pd.read_csv('cities.csv')\nint(df.people.sum())")
        assert first.result == "10801" and first.execution_count == 1
        second = s.run("import os\nos.makedirs('out')\ndf.to_csv('out/report.csv', index=False)\nlen(df)")
        assert second.result == "2" and second.execution_count == 2, "df carried over"
        assert s.run("ls data", language="bash").stdout == "notes.txt\n"
        listing = {entry["path"]: entry for entry in s.files()}
        assert set(listing) >= {"cities.csv", "data/notes.txt", "raw.bin", "out/report.csv"}
        assert listing["raw.bin"]["size"] == 2 and listing["raw.bin"]["modified"] > 0
        assert s.download("out/report.csv") == b"city,people\nOslo,709\nLima,10092\n"
        target = tmp_path / "notes.txt"
        assert s.download("data/notes.txt", to=target) == b"hello" and target.read_bytes() == b"hello"
        assert s.describe()["status"] == "idle"
    assert s.ended
    with pytest.raises(GoneError) as gone:
        s.run("1")
    assert gone.value.status == 410 and "deleted" in gone.value.error
    s.end()  # ending again is a no-op


def test_attach_reaches_an_existing_session_and_end_is_idempotent(center: Client, session: Session) -> None:
    session.run("kept = 'yes'")
    again = center.attach(session.id)
    assert again.run("kept").result == "'yes'"
    again.end()
    again.end()
    session.end()  # ended through the other handle: the center says 410, which end() takes as done
    with pytest.raises(GoneError):
        session.describe()


def test_a_session_cell_timeout_is_a_result_and_the_state_stays(session: Session) -> None:
    session.run("x = 5")
    slow = session.run("import time\ntime.sleep(60)", timeout=1)
    assert slow.status == "timeout" and slow.http_status == 504
    assert session.run("x + 1").result == "6"


# --- typed errors ---------------------------------------------------------------------------------

def test_400_bad_request(center: Client, session: Session) -> None:
    with pytest.raises(BadRequestError) as bad:
        center.run("print(1)", language="cobol")
    assert bad.value.status == 400 and "cobol" in bad.value.error
    # A path only the center can judge (the client refuses "../escape.txt" itself: see the tests below).
    session.run("import os\nos.symlink('/tmp', 'out')")
    with pytest.raises(BadRequestError) as through_link:
        session.upload("out/escape.txt", b"x")
    assert through_link.value.status == 400
    assert isinstance(bad.value, ClientError)


def test_401_unauthorized(center_url: str) -> None:
    for token in (None, "wrong"):
        with pytest.raises(UnauthorizedError) as refused, Client(center_url, token=token) as client:
            client.run("print(1)")
        assert refused.value.status == 401 and "token" in refused.value.error
    with pytest.raises(UnauthorizedError), Client(center_url, token="wrong") as client:
        client.session()


def test_403_forbidden(session: Session) -> None:
    session.run("import os\nopen('secret.txt', 'w').write('x')\nos.chmod('secret.txt', 0)")
    with pytest.raises(ForbiddenError) as forbidden:
        session.download("secret.txt")
    assert forbidden.value.status == 403 and "permission" in forbidden.value.error


def test_404_not_found(center: Client, center_url: str, session: Session) -> None:
    with pytest.raises(NotFoundError) as unknown:
        center.attach("0" * 32).run("1")
    assert unknown.value.status == 404
    with pytest.raises(NotFoundError):
        session.download("no-such-file.txt")
    with Client(center_url, token=OTHER_TOKEN) as other, pytest.raises(NotFoundError):
        other.attach(session.id).files()  # another token's session is as unknown
    with pytest.raises(NotFoundError):
        center.fetch(f"{center.url}/image/{'A' * 32}.png")


def test_409_conflict_while_a_cell_runs(session: Session) -> None:
    answers: list[RunResult] = []
    # The cell's own sleep is what the conflict needs: it holds the session busy for 8 s at most.
    slow = threading.Thread(target=lambda: answers.append(session.run("import time\ntime.sleep(60)", timeout=8)))
    slow.start()
    try:
        assert wait_until(lambda: session.describe()["status"] == "busy", 30)
        with pytest.raises(ConflictError) as busy:
            session.run("1")
        assert busy.value.status == 409 and busy.value.retry_after is not None and busy.value.retry_after >= 1
    finally:
        slow.join()
    assert answers[0].status == "timeout"


def test_410_gone(center: Client) -> None:
    s = center.session()
    s.end()
    for call in (lambda: s.run("1"), s.files, lambda: s.upload("a.txt", b"x"), lambda: s.download("a.txt")):
        with pytest.raises(GoneError) as gone:
            call()
        assert gone.value.status == 410 and "deleted" in gone.value.error


def test_413_payload_too_large(live_server: Callable[..., str]) -> None:
    with Client(live_server(max_upload_bytes=4096, max_request_bytes=65536)) as client:
        with pytest.raises(PayloadTooLargeError) as large:
            client.run("print(1)", files={"big.bin": bytes(100_000)})
        assert large.value.status == 413
        with client.session() as s:
            with pytest.raises(PayloadTooLargeError):
                s.upload("big.bin", bytes(100_000))
            assert s.upload("small.bin", bytes(100)) == [{"path": "small.bin", "size": 100}]


def test_an_upload_may_be_larger_than_a_run_request(waitress_server: Callable[..., str]) -> None:
    """max_upload_bytes holds for uploads through waitress as center.py sets it up (which once stopped
    them at twice max_request_bytes plus 8 MiB)."""
    with Client(waitress_server(max_request_bytes=1024 * 1024, max_upload_bytes=30 * 1024 * 1024)) as client, \
            client.session() as s:
        data = bytes(range(256)) * (80 * 1024)  # 20 MiB
        assert s.upload("big.bin", data) == [{"path": "big.bin", "size": len(data)}]
        assert s.run("import hashlib; print(hashlib.sha256(open('big.bin', 'rb').read()).hexdigest())").stdout \
            == hashlib.sha256(data).hexdigest() + "\n"


def test_503_service_unavailable(live_server: Callable[..., str]) -> None:
    with Client(live_server(max_sessions=1)) as client, client.session():
        with pytest.raises(ServiceUnavailableError) as busy:
            client.session()
        assert busy.value.status == 503 and "sessions" in busy.value.error
        assert busy.value.retry_after is not None and busy.value.retry_after >= 1


def test_507_insufficient_storage(live_server: Callable[..., str]) -> None:
    with Client(live_server(max_upload_bytes=200 * 1024 * 1024)) as client, client.session() as s:
        s.run("keep = 1")
        with pytest.raises((InsufficientStorageError, PayloadTooLargeError)) as full:
            s.upload("huge.bin", bytes(110 * 1024 * 1024))  # over the workspace's 100 MiB
        assert full.value.status in (507, 413) and "full" in full.value.error
        assert s.run("keep + 1").result == "2", "the session goes on"


def test_no_center_is_center_unreachable() -> None:
    with Client(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(CenterUnreachableError) as down:
            client.run("print(1)")
        assert down.value.status is None and "cannot reach" in down.value.error
        assert not client.healthy()


def test_every_status_has_its_error_class() -> None:
    # 500 and 502 cannot be caused on purpose against a healthy center: the mapping is checked here.
    expected = {400: BadRequestError, 401: UnauthorizedError, 403: ForbiddenError, 404: NotFoundError,
                409: ConflictError, 410: GoneError, 413: PayloadTooLargeError, 503: ServiceUnavailableError,
                507: InsufficientStorageError, 500: ServerError, 502: ServerError, 504: ServerError}
    for status, kind in expected.items():
        error = error_for(status, "why")
        assert type(error) is kind and error.status == status and error.error == "why"
    assert type(error_for(418, "teapot")) is ClientError


# --- arguments refused before any request (issue 33) ---------------------------------------------

NOT_SESSION_IDS = ["..", ".", "", "../runcode", "a/b", "%2e%2e", "0" * 65, "ABCDEF", "abc\n", "abc ", "g" * 32,
                   "0" * 31 + "\u0660"]
UNSAFE_UPLOAD_NAMES = ["a\\b.txt", "line\nbreak.txt", "cr\r.txt", "nul\0.txt", "tab\t.txt", "del\x7f.txt",
                       "\u202eevil.txt", 'q"uote.txt', "pct%22.txt", "pct%0a.txt", "pct%0D.txt", "../escape.txt",
                       "/etc/passwd", "a//b.txt", "a/./b.txt", "a/", "", "x" * 256, "a/" * 2048 + "b", "\udc80.txt"]


def refused_before_any_request(call: Callable[[], object]) -> InvalidArgumentError:
    """The InvalidArgumentError `call` raises (on a client of a port where nothing listens: a request would
    have raised CenterUnreachableError instead)."""
    with pytest.raises(InvalidArgumentError) as refused:
        call()
    error = refused.value
    assert error.status is None and isinstance(error, ValueError) and isinstance(error, BadRequestError)
    return error


def test_a_session_id_the_center_never_issued_is_refused_before_any_request(center: Client) -> None:
    # Red team: "/sessions/.." resolves to "/", so this ran a one-shot program, and describe() read the home page.
    with pytest.raises(InvalidArgumentError, match="not a session id"):
        center.attach("..").run("print('ran')")
    with pytest.raises(InvalidArgumentError):
        center.attach("..").describe()
    with Client(f"http://127.0.0.1:{free_port()}") as nowhere:
        for session_id in NOT_SESSION_IDS:
            error = refused_before_any_request(lambda s=session_id: nowhere.attach(s))
            assert "not a session id" in error.error, session_id
        refused_before_any_request(lambda: Session(nowhere, 42))  # type: ignore[arg-type]
        handle = nowhere.attach("0123456789abcdef" * 2)  # the center's own form: a request is made, and fails
        with pytest.raises(CenterUnreachableError):
            handle.describe()


def test_a_file_name_an_upload_would_change_is_refused_before_any_request(session: Session, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="not a path in the workspace"):
        session.upload("a\\b.txt", b"x")  # it arrived as ab.txt
    with pytest.raises(InvalidArgumentError):
        session.upload("line\nbreak.txt", b"x")  # it arrived as line%0Abreak.txt
    local = tmp_path / "local\\name.txt"
    local.write_bytes(b"x")
    with pytest.raises(InvalidArgumentError):
        session.upload(local)
    odd = ["sp ace é.txt", "100%.txt", "pct%41.txt", "a'b;c=d.txt", "semi;colon/x+y.txt", "emoji😀.txt"]
    for name in odd:  # names a multipart filename does carry as they are
        assert session.upload(name, name) == [{"path": name, "size": len(name.encode())}]
    listed = {entry["path"] for entry in session.files()}
    assert listed >= set(odd) and not listed & {"ab.txt", "line%0Abreak.txt", "localname.txt"}, listed
    # A program may make the names an upload cannot: they still download, quoted in the URL.
    session.run("open('a\\\\b.txt', 'w').write('back')\nopen('q\"uote.txt', 'w').write('quote')")
    assert session.download("a\\b.txt") == b"back" and session.download('q"uote.txt') == b"quote"
    with Client(f"http://127.0.0.1:{free_port()}") as nowhere:
        handle = nowhere.attach(session.id)
        for name in UNSAFE_UPLOAD_NAMES:
            error = refused_before_any_request(lambda n=name: handle.upload(n, b"x"))
            assert "not a path in the workspace" in error.error, name
            if "\\" not in name and '"' not in name and "%" not in name:
                refused_before_any_request(lambda n=name: handle.download(n))


def test_the_client_refuses_every_path_the_center_refuses() -> None:
    samples = [*UNSAFE_UPLOAD_NAMES, "ok.txt", "data/ok.csv", "\u2028", "\x85", "\u2066x", "x" * 255, "a/" * 2047 + "b",
               "é" * 128, "é" * 127 + "a", 7, None, b"bytes.txt"]
    for sample in samples:
        try:
            check_path(sample)
        except ValueError:
            with pytest.raises(InvalidArgumentError):
                workspace_path(sample)
        else:
            assert workspace_path(sample) == sample, sample


# --- streaming ------------------------------------------------------------------------------------

STREAMED = ("import sys\nfor i in range(4):\n    print(f'line {i}', flush=True)\n"
            "    print(f'warn {i}', file=sys.stderr, flush=True)\nlen('done')")


def same_result(streamed: RunResult, plain: RunResult) -> None:
    """A streamed run's final result is the plain run's result (durations and stored names aside)."""
    def comparable(result: RunResult) -> dict[str, object]:
        body = {key: value for key, value in result.raw.items() if key != "duration_ms"}
        body["images"] = list(result.images)
        body["files"] = list(result.files)
        return body
    assert comparable(streamed) == comparable(plain)
    assert streamed.http_status == plain.http_status


def test_streamed_run_calls_back_in_order_and_ends_with_the_plain_result(center: Client) -> None:
    out: list[str] = []
    err: list[str] = []
    events: list[dict] = []
    streamed = center.run(STREAMED, on_stdout=out.append, on_stderr=err.append, on_event=events.append)
    assert "".join(out) == "".join(f"line {i}\n" for i in range(4)) == streamed.stdout
    assert "".join(err) == "".join(f"warn {i}\n" for i in range(4)) == streamed.stderr
    assert events[-1]["type"] == "result" and {event["type"] for event in events} <= {
        "stdout", "stderr", "keepalive", "display", "result"}
    same_result(streamed, center.run(STREAMED))


def test_streamed_images_timeouts_and_refusals(center: Client) -> None:
    events: list[dict] = []
    chart = center.run("import matplotlib.pyplot as plt\nprint('drawing')\nplt.plot([1, 2], [2, 1])",
                       on_event=events.append)
    announced = {event["name"]: event["url"] for event in events if event["type"] == "image"}
    assert announced == chart.images and list(announced) == ["figure_1.png"]
    assert center.fetch(announced["figure_1.png"]).startswith(PNG_SIGNATURE)
    out: list[str] = []
    slow = center.run("import time\nprint('started', flush=True)\ntime.sleep(60)", timeout=1, on_stdout=out.append)
    assert "".join(out) == "started\n" and slow.status == "timeout" and slow.http_status == 504
    with pytest.raises(BadRequestError):
        center.run("print(1)", language="cobol", on_stdout=out.append)


def test_streamed_session_cells(session: Session) -> None:
    out: list[str] = []
    first = session.run(STREAMED, on_stdout=out.append)
    assert "".join(out) == first.stdout and first.execution_count == 1 and first.result == "4"
    plain = session.run(STREAMED)
    assert plain.execution_count == 2
    same_result(first, RunResult.from_body({**plain.raw, "execution_count": 1}))


def test_a_streamed_line_arrives_while_the_cell_still_runs(session: Session) -> None:
    class Seen(Exception):
        """Raised by the callback to hang up once the first line is there."""

    states: list[str] = []

    def on_stdout(text: str) -> None:
        states.append(session.client.attach(session.id).describe()["status"])
        raise Seen(text)

    with pytest.raises(Seen, match="first"):
        session.run("import time\nprint('first', flush=True)\ntime.sleep(60)", timeout=10, on_stdout=on_stdout)
    assert states == ["busy"], "the line came while the cell was still running"
    # Hanging up stops the cell (or its own limit does); the session then goes on with its state.
    assert wait_until(lambda: session.describe()["status"] == "idle", 60)
    assert session.run("time.time() > 0").result == "True"
