"""Sessions through the API: state that persists, files in and out, ownership, ends, faults, restarts."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import docker
import pytest
import requests
from conftest import CenterProcess, containers_of, wait_until
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

import models
import server.session_registry as sessions
from center import EXTENSION_KEY
from server.errors import Gone
from server.session_registry import SWEEP_SECONDS, owner_of

TOKEN = {"Authorization": "Bearer owner-token"}
OTHER = {"Authorization": "Bearer other-token"}


class Notebook:
    """A session through a Flask test client: create it, run cells, end it."""

    def __init__(self, client: FlaskClient, headers: dict[str, str] | None = None, **create: Any) -> None:
        self.client, self.headers = client, headers or {}
        response = client.post("/sessions", json=create or None, headers=self.headers)
        assert response.status_code == 201, response.get_json()
        self.body = response.get_json()
        self.id = self.body["session_id"]
        self.location = response.headers["Location"]

    def run(self, code: str, language: str = "python", **fields: Any) -> tuple[int, dict[str, Any]]:
        """One cell: (HTTP status, JSON body)."""
        response = self.client.post(f"/sessions/{self.id}/runcode", headers=self.headers,
                                    json={"code": code, "languageType": language, **fields})
        return response.status_code, response.get_json()

    def get(self) -> tuple[int, dict[str, Any]]:
        """GET the session."""
        response = self.client.get(f"/sessions/{self.id}", headers=self.headers)
        return response.status_code, response.get_json()

    def delete(self) -> int:
        """DELETE the session."""
        return self.client.delete(f"/sessions/{self.id}", headers=self.headers).status_code


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    """A center that takes two tokens."""
    return make_app(auth_tokens=("owner-token", "other-token")).test_client()


@pytest.fixture
def notebook(client: FlaskClient) -> Iterator[Notebook]:
    """A fresh session of the owner's, deleted afterwards."""
    session = Notebook(client, TOKEN)
    yield session
    session.delete()


# --- the notebook ------------------------------------------------------------------------------

def test_create_describe_and_delete(client: FlaskClient, docker_client: docker.DockerClient) -> None:
    session = Notebook(client, TOKEN)
    body = session.body
    assert session.location == f"/sessions/{session.id}" and len(session.id) >= 32
    assert body["status"] == "idle" and body["idle_timeout"] == 600
    assert body["created_at"] <= body["last_active_at"] < body["expires_at"]
    status, again = session.get()
    assert status == 200 and again["session_id"] == session.id
    container = [c for c in docker_client.api.containers(filters={"label": f"code-interpreter.sandbox={session.id}"})]
    assert len(container) == 1, "the session's container carries its id"
    assert session.delete() == 204
    status, gone = session.get()
    assert status == 410 and "deleted" in gone["error"]
    assert session.run("print(1)")[0] == 410
    assert wait_until(lambda: not docker_client.api.containers(
        all=True, filters={"label": f"code-interpreter.sandbox={session.id}"}), 60), "its container is removed"


def test_state_persists_between_cells_as_in_a_notebook(notebook: Notebook) -> None:
    status, first = notebook.run("import math\nx = 41\ndata = {'k': [1, 2]}")
    assert status == 200 and first["status"] == "ok" and first["result"] is None and first["execution_count"] == 1
    status, second = notebook.run("x + 1")
    assert (status, second["result"], second["execution_count"]) == (200, "42", 2)
    assert notebook.run("math.sqrt(16)")[1]["result"] == "4.0"
    status, third = notebook.run("data['k'].append(3)\ndata")
    assert third["result"] == "{'k': [1, 2, 3]}"
    assert notebook.get()[1]["execution_count"] == 4


def test_a_table_shows_as_a_notebook_shows_it(notebook: Notebook) -> None:
    notebook.run("import pandas as pd\ndf = pd.DataFrame({'city': ['Oslo', 'Lima'], 'people': [709, 10092]})")
    result = notebook.run("df.head()")[1]["result"]
    assert "city" in result and "Lima" in result and "10092" in result


def test_errors_keep_the_state_and_bash_shares_the_folder(notebook: Notebook) -> None:
    notebook.run("kept = 'yes'\nopen('notes.txt', 'w').write('from python')")
    status, failed = notebook.run("1 / 0")
    assert status == 200 and failed["status"] == "error" and "ZeroDivisionError" in failed["error"]
    assert notebook.run("kept")[1]["result"] == "'yes'"
    status, bash = notebook.run("cat notes.txt; echo; ls", "bash")
    assert status == 200 and bash["output"].startswith("from python\n") and "notes.txt" in bash["output"]


def test_figures_are_captured_per_cell(notebook: Notebook, client: FlaskClient) -> None:
    notebook.run("import matplotlib.pyplot as plt")
    first = notebook.run("plt.plot([1, 2, 3])")[1]
    second = notebook.run("plt.bar(['a', 'b'], [3, 1])")[1]
    assert len(first["images"]) == 1 and len(second["images"]) == 1
    assert set(first["images"]) != set(second["images"]), "each cell has its own figure"
    url = next(iter(second["images"].values()))
    assert client.get(url.removeprefix("http://localhost")).headers["Content-Type"] == "image/png"


def test_a_cell_past_its_limit_is_interrupted_and_the_state_kept(notebook: Notebook) -> None:
    notebook.run("before = 7")
    status, body = notebook.run("import time\nprint('working', flush=True)\nwhile True:\n    time.sleep(0.1)",
                                timeout=1)
    assert status == 504 and body["status"] == "timeout" and body["output"] == "working\n"
    assert notebook.get()[1]["status"] == "idle"
    assert notebook.run("before * 6")[1]["result"] == "42"


def test_a_cell_that_ignores_the_interrupt_kills_the_session(notebook: Notebook) -> None:
    code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)"
    status, body = notebook.run(code, timeout=1)
    assert status == 504 and body["status"] == "timeout"
    status, gone = notebook.get()
    assert status == 410 and "interrupt" in gone["error"]
    assert notebook.run("print(1)")[0] == 410


def test_a_memory_bomb_ends_the_session_as_oom(notebook: Notebook) -> None:
    status, body = notebook.run("x = bytearray(2 * 1024**3)")
    assert status in (200, 502), body
    if status == 200:
        assert body["status"] == "oom"
    assert notebook.get()[0] == 410, "the session is dead"


def test_children_left_by_a_cell_are_gone_before_the_next(notebook: Notebook) -> None:
    notebook.run("import subprocess\nsubprocess.Popen(['sleep', '300'], start_new_session=True)\nstate = 1")
    status, body = notebook.run("import os\n[p for p in os.listdir('/proc') if p.isdigit() and "
                                "open(f'/proc/{p}/cmdline').read().startswith('sleep')]")
    assert status == 200 and body["result"] == "[]"
    assert notebook.run("state")[1]["result"] == "1", "the interpreter itself survives"


def test_a_second_call_while_a_cell_runs_is_409(notebook: Notebook) -> None:
    answers: list[tuple[int, dict[str, Any]]] = []
    slow = threading.Thread(target=lambda: answers.append(notebook.run("import time\ntime.sleep(3)\n'done'")))
    slow.start()
    assert wait_until(lambda: notebook.get()[1]["status"] == "busy", 10)
    response = notebook.client.post(f"/sessions/{notebook.id}/runcode", json={"code": "1"}, headers=TOKEN)
    assert response.status_code == 409 and response.headers["Retry-After"].isdigit()
    slow.join()
    assert answers[0][1]["result"] == "'done'"


# --- ownership, ids and limits -----------------------------------------------------------------

def test_a_session_is_invisible_to_other_tokens_and_unknown_ids_are_404(notebook: Notebook,
                                                                        client: FlaskClient) -> None:
    for method, path in (("get", ""), ("delete", ""), ("post", "/runcode"), ("get", "/files")):
        response = client.open(f"/sessions/{notebook.id}{path}", method=method.upper(), headers=OTHER,
                               json={"code": "1"} if method == "post" else None)
        assert response.status_code == 404, (method, path)
        assert client.open(f"/sessions/{'0' * 32}{path}", method=method.upper(), headers=TOKEN,
                           json={"code": "1"} if method == "post" else None).status_code == 404
    assert client.get(f"/sessions/{notebook.id}").status_code == 401
    assert notebook.get()[0] == 200, "the owner still has it"


def test_more_sessions_than_allowed_is_503(make_app: Callable[..., Flask]) -> None:
    client = make_app(max_sessions=1).test_client()
    first = Notebook(client)
    try:
        response = client.post("/sessions")
        assert response.status_code == 503 and response.headers["Retry-After"].isdigit()
        assert "sessions" in response.get_json()["error"]
    finally:
        first.delete()
    Notebook(client).delete()  # the ended one no longer counts


@pytest.mark.parametrize("body", [{"idle_timeout": 0}, {"idle_timeout": -1}, {"idle_timeout": "x"}, [1], "text"])
def test_bad_create_bodies_are_400(client: FlaskClient, body: Any) -> None:
    assert client.post("/sessions", json=body, headers=TOKEN).status_code == 400


@pytest.mark.parametrize("raw", ["[" * 100_000, '{"idle_timeout": 1' + "0" * 400 + "}", "{", b"\xff"])
def test_hostile_create_bodies_are_400_not_500(client: FlaskClient, raw: str | bytes) -> None:
    """Nested past the parser's recursion limit, an integer beyond any float, not JSON, not text."""
    response = client.post("/sessions", data=raw, headers={**TOKEN, "Content-Type": "application/json"})
    assert response.status_code == 400 and "error" in response.get_json(), response.get_data()


def test_an_idle_session_expires_and_its_container_goes(client: FlaskClient,
                                                        docker_client: docker.DockerClient) -> None:
    session = Notebook(client, TOKEN, idle_timeout=1)
    assert session.body["idle_timeout"] == 1
    assert Notebook(client, TOKEN, idle_timeout=10**6).body["idle_timeout"] == 600, "only lowered, never raised"
    assert wait_until(lambda: session.get()[0] == 410, SWEEP_SECONDS * 3)
    assert "idle" in session.get()[1]["error"]
    assert wait_until(lambda: not docker_client.api.containers(
        all=True, filters={"label": f"code-interpreter.sandbox={session.id}"}), 60), "its container is removed"


def test_a_container_killed_from_outside_ends_the_session(notebook: Notebook,
                                                          docker_client: docker.DockerClient) -> None:
    other = Notebook(notebook.client, TOKEN)
    other.run("mine = 'safe'")
    (container,) = docker_client.api.containers(filters={"label": f"code-interpreter.sandbox={notebook.id}"})
    docker_client.api.kill(container["Id"])
    status, body = notebook.run("print(1)")
    assert status in (410, 502) and "error" in body
    assert wait_until(lambda: notebook.get()[0] == 410, SWEEP_SECONDS * 3)
    assert other.run("mine")[1]["result"] == "'safe'", "the other session is untouched"
    other.delete()


# --- files ----------------------------------------------------------------------------------------

def upload(notebook: Notebook, *files: tuple[str, bytes]) -> Any:
    """POST the files as multipart `file` parts."""
    data = {"file": [(io.BytesIO(content), name) for name, content in files]}
    return notebook.client.post(f"/sessions/{notebook.id}/files", data=data, headers=notebook.headers,
                                content_type="multipart/form-data")


def test_files_go_in_are_listed_and_come_out(notebook: Notebook) -> None:
    csv = b"city,people\nOslo,709\nLima,10092\n"
    response = upload(notebook, ("data/cities.csv", csv), ("notes.txt", b"hello"))
    assert response.status_code == 201
    assert response.get_json()["files"] == [{"path": "data/cities.csv", "size": len(csv)},
                                            {"path": "notes.txt", "size": 5}]
    status, body = notebook.run("import pandas as pd\ndf = pd.read_csv('data/cities.csv')\n"
                                "int(df['people'].sum())")
    assert body["result"] == "10801"
    notebook.run("import os\nos.makedirs('out', exist_ok=True)\ndf.to_csv('out/report.csv', index=False)")
    listing = notebook.client.get(f"/sessions/{notebook.id}/files", headers=TOKEN).get_json()["files"]
    assert {entry["path"] for entry in listing} >= {"data/cities.csv", "notes.txt", "out/report.csv"}
    assert all(entry["size"] >= 0 and entry["modified"] > 0 for entry in listing)
    download = notebook.client.get(f"/sessions/{notebook.id}/files/out/report.csv", headers=TOKEN)
    assert download.status_code == 200 and download.data == csv
    assert download.headers["Content-Disposition"].startswith("attachment")
    assert download.headers["X-Content-Type-Options"] == "nosniff" and "csv" in download.headers["Content-Type"]
    assert notebook.client.get(f"/sessions/{notebook.id}/files/nope.txt", headers=TOKEN).status_code == 404


def test_the_listing_holds_only_files_a_request_can_name(notebook: Notebook) -> None:
    """Names with a control character or bytes that are not UTF-8 are counted, not listed; every listed path
    downloads."""
    notebook.run("import os\nopen('c\\n<img src=x onerror=alert(1)>', 'w').write('x')\n"
                 "open(b'a\\xff', 'w').write('x')\nos.mkdir('bad\\x1bdir')\nopen('bad\\x1bdir/in', 'w').write('x')\n"
                 "open('fine.txt', 'w').write('fine')")
    listing = notebook.client.get(f"/sessions/{notebook.id}/files", headers=TOKEN).get_json()
    assert [entry["path"] for entry in listing["files"]] == ["fine.txt"] and listing["left_out"] == 3, listing
    for entry in listing["files"]:
        assert notebook.client.get(f"/sessions/{notebook.id}/files/{entry['path']}", headers=TOKEN).status_code == 200


def test_a_path_of_4000_bytes_goes_in_is_listed_and_comes_out(notebook: Notebook) -> None:
    """The contract allows 4096 bytes of path: percent-encoded, multi-byte text takes three times as many
    on the agent's request line (an upload was "malformed", a file a cell made listed but not downloadable)."""
    folders = ["数" * 85] * 15  # 255 bytes each, NAME_MAX
    uploaded = "/".join([*folders, "数" * 53 + "x"])
    made = "/".join([*folders[:-1], "文" * 85, "文" * 53 + "y"])
    assert len(uploaded.encode()) == len(made.encode()) == 4000
    response = upload(notebook, (uploaded, b"uploaded"))
    assert response.status_code == 201 and response.get_json()["files"] == [{"path": uploaded, "size": 8}], \
        response.get_json()
    status, body = notebook.run(f"import os\npath = {made!r}\nos.makedirs(os.path.dirname(path))\n"
                                "open(path, 'w').write('made by a cell')")
    assert (status, body["status"]) == (200, "ok"), body
    listing = notebook.client.get(f"/sessions/{notebook.id}/files", headers=TOKEN).get_json()
    assert sorted(entry["path"] for entry in listing["files"]) == sorted([uploaded, made]), listing
    for path, content in ((uploaded, b"uploaded"), (made, b"made by a cell")):
        download = notebook.client.get(f"/sessions/{notebook.id}/files/{quote(path)}", headers=TOKEN)
        assert (download.status_code, download.data) == (200, content), download.get_data(as_text=True)[:300]


def test_a_socket_fifo_or_folder_downloads_as_a_json_400(notebook: Notebook) -> None:
    """Not a regular file: a clear refusal from the agent, passed on, not a 502 (opening a socket fails)."""
    status, body = notebook.run("import os, socket\nsocket.socket(socket.AF_UNIX).bind('s.sock')\n"
                                "os.mkfifo('pipe')\nos.mkdir('folder')\nopen('folder/in', 'w').write('x')")
    assert (status, body["status"]) == (200, "ok"), body
    for path in ("s.sock", "pipe", "folder"):
        response = notebook.client.get(f"/sessions/{notebook.id}/files/{path}", headers=TOKEN)
        error = response.get_json()["error"]
        assert response.status_code == 400 and "not a regular file" in error and path in error, (path, error)
    assert notebook.client.get(f"/sessions/{notebook.id}/files/folder/in", headers=TOKEN).data == b"x"


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/passwd", "a/../../x", "a//b", "a\x00b", "line\nbreak.txt"])
def test_upload_paths_outside_the_workspace_are_400(notebook: Notebook, name: str) -> None:
    response = upload(notebook, (name, b"x"))
    assert response.status_code == 400 and "error" in response.get_json()


@pytest.mark.parametrize("path", ["%2Fetc%2Fpasswd", "/etc/passwd", "a//b", "..%2Fx", "%2e%2e/x"])
def test_download_paths_outside_the_workspace_are_a_json_400(notebook: Notebook, path: str) -> None:
    """A leading slash was merged away by the router: an HTML 308 redirect, then `no such file: etc`."""
    response = notebook.client.get(f"/sessions/{notebook.id}/files/{path}", headers=TOKEN)
    assert response.status_code == 400 and "error" in response.get_json(), response.get_data(as_text=True)


def test_a_file_through_a_planted_symlink_is_refused(notebook: Notebook) -> None:
    notebook.run("import os\nos.symlink('/etc', 'etc')\nos.symlink('/etc/passwd', 'passwd')")
    assert upload(notebook, ("etc/evil", b"x")).status_code in (400, 409)
    assert notebook.client.get(f"/sessions/{notebook.id}/files/passwd", headers=TOKEN).status_code in (400, 404)


@pytest.mark.parametrize("path, status, words", [
    ("notes.txt/x", 409, "not a folder"),  # a file where the path needs a folder
    ("link/x", 400, "symbolic link"),      # a folder the program swapped for a link
])
def test_a_cell_whose_files_the_workspace_refuses_says_why(notebook: Notebook, path: str, status: int,
                                                           words: str) -> None:
    """The workspace's reason with its own status, not a 502 nor a false "a cell is running"; the cell did not run."""
    notebook.run("import os\nopen('notes.txt', 'w').write('n')\nos.symlink('/tmp', 'link')")
    code, body = notebook.run("print('ran')", files=[{"path": path, "content_base64": "aGk="}])
    assert code == status and words in body["error"] and "did not run" in body["error"], (code, body)
    assert notebook.run("print('still here')")[1]["output"] == "still here\n"


def test_a_thread_a_cell_left_running_gets_no_cpu_between_cells(notebook: Notebook) -> None:
    """The thread counts while a cell runs (here a three-second sleep) and stands still while the
    session idles (two seconds), so an idle session costs no CPU; its state is kept all the same."""
    spin = "import threading, time\nn = [0]\ndef spin():\n    while True:\n        n[0] += 1\n" \
           "threading.Thread(target=spin, daemon=True).start()"
    assert notebook.run(spin, timeout=5)[0] == 200
    status, body = notebook.run("a = n[0]\ntime.sleep(3)\nb = n[0]\nprint(a, b)")
    a, b = map(int, body["output"].split())
    time.sleep(2)
    c = int(notebook.run("print(n[0])")[1]["output"])
    assert b - a > 0, "the thread runs during a cell"
    # Between cells it counts only while a cell ends and the next begins (the agent stops and resumes it):
    # on a slow runner that takes longer, so the cell it is compared with is long (3 s), and an idle session
    # whose thread ran on (2 s and more) stays far above the quarter.
    assert c - b < (b - a) / 4, f"while idle for 2 s the thread counted {c - b}, in a 3 s cell {b - a}"


def test_a_session_deleted_while_its_cell_runs_answers_410_with_the_reason(client: FlaskClient) -> None:
    session = Notebook(client, TOKEN)
    answers: list[tuple[int, dict[str, Any]]] = []
    cell = threading.Thread(target=lambda: answers.append(session.run("import time\ntime.sleep(5)")))
    cell.start()
    assert wait_until(lambda: session.get()[1]["status"] == "busy", 30), "the cell never ran"
    assert session.delete() == 204
    cell.join(30)
    (status, body), = answers
    assert status == 410 and "deleted by its owner" in body["error"], (status, body)


def test_a_session_deleted_while_its_files_are_listed_answers_410_not_502(client: FlaskClient,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The playground lists the files after each cell without waiting: a DELETE that removed the
    container under that listing made it a 502 "sandbox failed" (seen on a loaded machine)."""
    session = Notebook(client, TOKEN)
    registry = client.application.extensions[EXTENSION_KEY].registry
    agent = registry.live[session.id].sandbox.agent
    call = agent.call

    def deleted_meanwhile(method: str, path: str, *args: Any) -> Any:
        if path.startswith("/files"):  # the owner's DELETE lands while the listing is on its way
            assert session.delete() == 204
        return call(method, path, *args)

    monkeypatch.setattr(agent, "call", deleted_meanwhile)
    response = client.get(f"/sessions/{session.id}/files", headers=TOKEN)
    assert response.status_code == 410, response.get_json()
    assert "deleted by its owner" in response.get_json()["error"]


def test_a_registry_from_before_session_networks_gains_the_column_and_keeps_its_sessions(
        database_url: str) -> None:
    """A database made by the version before sessions' egress has a sessions table without `network`:
    create_tables adds it (twice is harmless), and the rows stay."""
    schema = f"migration_{os.getpid()}"
    options: dict[str, Any] = {}
    if database_url.startswith("postgresql"):  # a schema of its own: the shared test database is not touched
        with create_engine(database_url).begin() as connection:
            connection.execute(text(f"CREATE SCHEMA {schema}"))
        options = {"connect_args": {"options": f"-csearch_path={schema}"}}
    engine = create_engine(database_url, **options)
    try:
        models.create_tables(engine)
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE sessions DROP COLUMN network"))
            connection.execute(text(
                "INSERT INTO sessions (id, owner, node, container_id, socket_dir, program_uid, idle_timeout, "
                "execution_count, created_at, last_active_at, lifetime_ends_at, dead) VALUES ('old', '', 'n', "
                "'c', '/s', 61000, 60, 3, :t, :t, :t, :f)"), {"t": sessions.now(), "f": False})
        models.create_tables(engine)
        models.create_tables(engine)
        with engine.connect() as connection:
            row = connection.execute(text("SELECT execution_count, network FROM sessions WHERE id = 'old'")).one()
        assert tuple(row) == (3, None)
    finally:
        engine.dispose()
        if database_url.startswith("postgresql"):
            with create_engine(database_url).begin() as connection:
                connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))


def test_the_idle_sweep_spares_a_session_used_while_it_sweeps(client: FlaskClient,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep read every record first and then took ~0.1 s to end each idle one: a session used
    meanwhile was ended on the idle time it had when the sweep began."""
    # The registry's clock moves only when the test moves it: starting or removing a container takes
    # seconds under gVisor, and a real clock would make a session truly idle in the meantime.
    start = sessions.now()
    clock = [start]
    monkeypatch.setattr(sessions, "now", lambda: clock[0])
    registry = client.application.extensions[EXTENSION_KEY].registry
    registry._sweeper.stop()  # this test sweeps by itself, at the moment it chooses
    first, used = Notebook(client, TOKEN, idle_timeout=1), Notebook(client, TOKEN, idle_timeout=2)
    try:
        assert first.run("v = 1")[0] == 200
        clock[0] = start + timedelta(seconds=0.1)  # the sweep takes the longest idle first
        assert used.run("v = 1")[0] == 200
        clock[0] = start + timedelta(seconds=1.5)  # the first is past its timeout, the other not yet
        end = registry._end

        def end_after_a_use(db: Any, record: Any, reason: str, dead: bool) -> None:
            if record.id == first.id:  # while the sweep ends the first, the other is used...
                assert used.run("v += 1")[0] == 200
                clock[0] = start + timedelta(seconds=2.5)  # ...and by the sweep's first read idle too long
            end(db, record, reason, dead)

        monkeypatch.setattr(registry, "_end", end_after_a_use)
        registry.sweep()
        assert first.get()[0] == 410
        status, body = used.run("v")
        assert status == 200 and body["result"] == "2", body
    finally:
        monkeypatch.undo()
        first.delete()
        used.delete()


def test_a_session_past_its_idle_timeout_is_ended_when_next_asked_for(client: FlaskClient,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      docker_client: docker.DockerClient) -> None:
    """Not only at the sweeper's next round: in between, an expired session ran a cell (and lived on)."""
    clock = [sessions.now()]  # the registry's, moved by the test only: a slow start is no idle time
    monkeypatch.setattr(sessions, "now", lambda: clock[0])
    registry = client.application.extensions[EXTENSION_KEY].registry
    registry._sweeper.stop()
    session = Notebook(client, TOKEN, idle_timeout=1)
    assert session.run("v = 1")[0] == 200
    clock[0] += timedelta(seconds=1.5)
    status, body = session.run("v")
    assert status == 410 and body["error"] == "the session has ended: it was idle for 1 s", body
    assert session.get()[0] == 410
    assert not docker_client.api.containers(all=True, filters={"label": f"code-interpreter.sandbox={session.id}"})


def test_a_session_that_ends_while_a_request_is_on_its_way_answers_410(notebook: Notebook) -> None:
    """A request found the session live (find()), then it was deleted (say, during a long upload): the
    call it goes on to make is a 410, not a KeyError's 500."""
    registry = notebook.client.application.extensions[EXTENSION_KEY].registry
    with registry.database() as db:
        record = registry.find(db, notebook.id, owner_of("owner-token"))
        registry.end(db, record, "deleted by its owner")
        for call in (lambda: registry.run_cell(record, b"{}", 5), lambda: registry.list_files(record),
                     lambda: registry.upload(record, "a.txt", io.BytesIO(b"a"), 1)):
            with pytest.raises(Gone):
                call()


def test_an_upload_over_the_limit_is_413(make_app: Callable[..., Flask]) -> None:
    client = make_app(max_upload_bytes=4096).test_client()
    session = Notebook(client)
    try:
        response = upload(session, ("big.bin", bytes(100_000)))
        assert response.status_code == 413 and "error" in response.get_json()
        assert upload(session, ("small.bin", bytes(100))).status_code == 201
    finally:
        session.delete()


def test_a_full_workspace_is_507_and_the_session_goes_on(make_app: Callable[..., Flask]) -> None:
    client = make_app(max_upload_bytes=200 * 1024 * 1024).test_client()
    session = Notebook(client)
    try:
        session.run("keep = 1")
        response = upload(session, ("huge.bin", bytes(110 * 1024 * 1024)))
        assert response.status_code in (413, 507) and "full" in response.get_json()["error"]
        assert session.run("keep + 1")[1]["result"] == "2"
    finally:
        session.delete()


# --- one-shot files ------------------------------------------------------------------------------

def test_one_shot_files_in_and_out(make_app: Callable[..., Flask]) -> None:
    import base64

    client = make_app().test_client()
    code = ("import pandas as pd\ndf = pd.read_csv('data.csv')\n"
            "df.assign(total=df.a + df.b).to_csv('report.csv', index=False)\nprint(len(df))\n"
            "import os\nos.mkdir('out')\ndf.describe().to_csv('out/summary.csv')")
    response = client.post("/runcode", json={"code": code, "files": [
        {"path": "data.csv", "content_base64": base64.b64encode(b"a,b\n1,2\n3,4\n").decode()}]})
    body = response.get_json()
    assert response.status_code == 200 and body["output"] == "2\n", body
    assert set(body["files"]) == {"report.csv", "out/summary.csv"}, "the untouched input does not come back"
    download = client.get(body["files"]["report.csv"].removeprefix("http://localhost"))
    assert download.data == b"a,b,total\n1,2,3\n3,4,7\n"
    assert download.headers["Content-Disposition"].startswith("attachment")
    summary = client.get(body["files"]["out/summary.csv"].removeprefix("http://localhost"))
    assert summary.data.startswith(b",a,b\ncount,2.0,2.0\n"), summary.data
    assert 'filename="summary.csv"' in summary.headers["Content-Disposition"], "saved under its own name"


# --- restarts and faults -----------------------------------------------------------------------

def remote_cell(center: CenterProcess, session_id: str, code: str) -> dict[str, Any]:
    """One cell through a real center."""
    response = requests.post(f"{center.url}/sessions/{session_id}/runcode", json={"code": code}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_sessions_survive_a_restart_of_the_center(center_process: Callable[..., CenterProcess],
                                                  docker_client: docker.DockerClient, signum: int) -> None:
    # The third session waits for a sandbox the pool starts meanwhile: seconds on a slow runner.
    center = center_process(queue_wait_seconds=45).start()
    ids = []
    for n in range(3):
        response = requests.post(f"{center.url}/sessions", timeout=60)
        assert response.status_code == 201
        ids.append(response.json()["session_id"])
        remote_cell(center, ids[-1], f"value = {n} * 10")
    deployment = f"pytest-center-{center.port}"
    before = {c["Id"] for c in containers_of(docker_client, deployment)}
    center.signal(signum)
    center.process.wait(60)
    center.start()
    for n, session_id in enumerate(ids):
        assert remote_cell(center, session_id, "value + 1")["result"] == str(n * 10 + 1)
    after = {c["Id"] for c in containers_of(docker_client, deployment)}
    session_containers = {c["Id"] for c in docker_client.api.containers(
        filters={"label": "code-interpreter.sandbox"}) if c["Labels"]["code-interpreter.sandbox"] in ids}
    assert session_containers <= before & after and len(session_containers) == 3
    assert len(after - session_containers) <= 2, "only the pool's own sandboxes besides the sessions"
    for session_id in ids:
        assert requests.delete(f"{center.url}/sessions/{session_id}", timeout=60).status_code == 204


def test_a_cell_that_runs_while_postgres_goes_down_still_answers(
        make_app: Callable[..., Flask], postgres_url: str, postgres_control: Callable[[str], None]) -> None:
    client = make_app(database_url=postgres_url).test_client()
    session = Notebook(client)
    session.run("x = 5")
    answers: list[tuple[int, dict[str, Any]]] = []
    cell = threading.Thread(target=lambda: answers.append(session.run("import time\ntime.sleep(4)\nx * 2")))
    cell.start()
    # The database goes once the cell runs (it has read what it needs), however late it starts.
    assert wait_until(lambda: session.get()[1]["status"] == "busy", 30), "the cell never ran"
    postgres_control("stop")
    try:
        cell.join(60)
        assert answers[0][0] == 200 and answers[0][1]["result"] == "10", "the running cell still answers"
        meanwhile = client.get(f"/sessions/{session.id}")
        assert meanwhile.status_code == 503 and meanwhile.headers["Retry-After"].isdigit()
        assert "database" in meanwhile.get_json()["error"]
    finally:
        postgres_control("start")
    assert wait_until(lambda: session.get()[0] == 200, 60)
    assert session.run("x + 1")[1]["result"] == "6", "the session and its state survive the outage"
    session.delete()
