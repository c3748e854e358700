"""SPEC.md's HTTP API, row by row, against real sandboxes (Flask test client, or a live server for concurrency)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from urllib.parse import quote

import pytest
import requests
from conftest import wait_until
from flask import Flask
from flask.testing import FlaskClient

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [2, 3, 1])\nplt.title('demo')"


def run(client: FlaskClient, **body: object):
    """POST /runcode with a JSON body."""
    return client.post("/runcode", json=body)


def test_post_hello_world(client: FlaskClient) -> None:
    response = run(client, languageType="python", variables={}, code="print('Hello, World!')")
    assert response.status_code == 200
    body = response.get_json()
    assert body["output"] == "Hello, World!\n"
    assert body["stderr"] == "" and body["exit_code"] == 0 and body["status"] == "ok"
    assert body["images"] == {} and "error" not in body
    assert isinstance(body["duration_ms"], float)


def test_post_without_json_content_type_is_accepted(client: FlaskClient) -> None:
    response = client.post("/runcode", data='{"code": "print(1)"}', content_type="text/plain")
    assert response.get_json()["output"] == "1\n"


def test_get_with_unicode_ampersand_and_quotes(client: FlaskClient) -> None:
    code = "print('a&b=c', \"double\", '中文 ✓', 1+1)"
    response = client.get("/runcode", query_string={"code": code, "languageType": "Python"})
    assert response.status_code == 200
    assert response.get_json()["output"] == 'a&b=c double 中文 ✓ 2\n'


def test_seed_fastgpt_style_get(live_server: Callable[..., str]) -> None:
    url = live_server()
    code, variables = 'print(m * n, "ok")', '{"m": 7,"n": 4}'
    raw = f"{url}/runcode?code={quote(code)}&languageType=python&variables={quote(variables)}"
    response = requests.get(raw, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["output"] == "28 ok\n"
    # The same with the JSON text left as FastGPT's template writes it (braces, quotes, space unencoded).
    response = requests.get(f"{url}/runcode?code=print(m)&languageType=python&variables={variables}", timeout=60)
    assert response.json()["output"] == "7\n"


@pytest.mark.parametrize("fenced, language, expected", [
    ("```python\nprint('py')\n```", None, "py\n"),
    ("```\nprint('plain')\n```", None, "plain\n"),
    ("```bash\necho sh\n```", None, "sh\n"),
    ("```bash\necho explicit\n```", "bash", "explicit\n"),
    ("Here is the code:\n```python\nprint('from prose')\n```\nIt prints a line.", None, "from prose\n"),
])
def test_code_fences_are_unwrapped(client: FlaskClient, fenced: str, language: str | None, expected: str) -> None:
    body = {"code": fenced} if language is None else {"code": fenced, "languageType": language}
    response = client.post("/runcode", json=body)
    assert response.get_json()["output"] == expected


def test_bash_with_variables(client: FlaskClient) -> None:
    body = run(client, languageType="BASH", code='echo "$name has $count"', variables={"name": "x", "count": 3})
    assert body.get_json()["output"] == "x has 3\n"


def test_python_variables(client: FlaskClient) -> None:
    response = run(client, code="print(s == 'hi', rows[1]['v'] + 1)", variables={"s": "hi", "rows": [{}, {"v": 41}]})
    assert response.get_json()["output"] == "True 42\n"


def test_program_error_is_200_with_error(client: FlaskClient) -> None:
    response = run(client, code="1/0")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "error" and body["exit_code"] == 1
    assert "ZeroDivisionError" in body["error"] and "ZeroDivisionError" in body["stderr"]


def test_timeout_answers_504_with_partial_output(client: FlaskClient) -> None:
    response = run(client, code="import time\nprint('before', flush=True)\ntime.sleep(30)", timeout=1)
    assert response.status_code == 504
    body = response.get_json()
    assert body["status"] == "timeout" and body["output"] == "before\n"
    assert "time limit" in body["error"]


def test_timeout_above_the_configured_limit_is_capped(make_app: Callable[..., Flask]) -> None:
    client = make_app(timeout_seconds=1).test_client()
    response = run(client, code="import time\ntime.sleep(20)", timeout=60)
    assert response.status_code == 504
    assert response.get_json()["error"].endswith("time limit of 1 s and was killed")


def test_output_limit_status(make_app: Callable[..., Flask]) -> None:
    client = make_app(max_output_bytes=4096).test_client()
    body = run(client, code="print('y' * 100000)").get_json()
    assert body["status"] == "output_limit" and len(body["output"]) == 4096 and "error" in body


def test_plot_link_serves_png_with_caching_headers(client: FlaskClient) -> None:
    body = run(client, code=PLOT).get_json()
    assert body["status"] == "ok"
    (name, url), = body["images"].items()
    assert name == "figure_1.png"
    assert url.startswith("http://localhost/image/") and url.endswith(".png")
    path = url.removeprefix("http://localhost")
    image = client.get(path)
    assert image.status_code == 200
    assert image.content_type == "image/png" and image.data.startswith(b"\x89PNG")
    assert image.headers["X-Content-Type-Options"] == "nosniff"
    assert "immutable" in image.headers["Cache-Control"]
    etag = image.headers["ETag"]
    assert client.get(path, headers={"If-None-Match": etag}).status_code == 304
    head = client.head(path)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(image.data)) and head.data == b""


def test_image_links_use_the_configured_domain(make_app: Callable[..., Flask]) -> None:
    client = make_app(domain="ci.example.com").test_client()
    (url,) = run(client, code=PLOT).get_json()["images"].values()
    assert url.startswith("https://ci.example.com/image/")
    client = make_app(domain="http://10.0.0.5:8080/").test_client()
    (url,) = run(client, code=PLOT).get_json()["images"].values()
    assert url.startswith("http://10.0.0.5:8080/image/")


def test_images_are_stored_in_each_database(make_app: Callable[..., Flask], database_url: str) -> None:
    client = make_app(database_url=database_url).test_client()
    code = "from PIL import Image\nImage.new('RGB', (4, 4), 'blue').save('b.jpg')\n" + PLOT
    images = run(client, code=code).get_json()["images"]
    assert sorted(images) == ["b.jpg", "figure_1.png"]
    served = client.get(images["b.jpg"].removeprefix("http://localhost"))
    assert served.status_code == 200 and served.content_type == "image/jpeg"


@pytest.mark.parametrize("path", [
    "/image/doesnotexist.png",
    "/image/" + "A" * 32 + ".png",
    "/image/../../etc/passwd",
    "/image/%00.png",
])
def test_unknown_or_malformed_image_is_404_json(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert "error" in response.get_json()


def test_images_need_no_token(make_app: Callable[..., Flask]) -> None:
    client = make_app(auth_tokens=("s3cret",)).test_client()
    body = client.post("/runcode", json={"code": PLOT}, headers={"Authorization": "Bearer s3cret"}).get_json()
    (url,) = body["images"].values()
    assert client.get(url.removeprefix("http://localhost")).status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"},
                                     {"Authorization": "Bearer "}, {"Authorization": "s3cret"}])
def test_token_missing_or_wrong_is_401(make_app: Callable[..., Flask], headers: dict[str, str]) -> None:
    client = make_app(auth_tokens=("s3cret", "other")).test_client()
    response = client.post("/runcode", json={"code": "print(1)"}, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.get_json()["error"]


def test_accepted_token_runs(make_app: Callable[..., Flask]) -> None:
    client = make_app(auth_tokens=("s3cret", "other")).test_client()
    response = client.get("/runcode", query_string={"code": "print(2)"}, headers={"Authorization": "Bearer other"})
    assert response.status_code == 200 and response.get_json()["output"] == "2\n"


@pytest.mark.parametrize("data, fragment", [
    ("not json", "not valid JSON"),
    ("", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"languageType": "python"}', "'code' field is required"),
    ('{"code": 42}', "must be a string"),
    ('{"code": "print(1)", "variables": [1]}', "variables"),
    ('{"code": "print(1)", "variables": "not json"}', "variables"),
    ('{"code": "print(1)", "variables": {"1bad": 1}}', "not allowed"),
    ('{"code": "print(1)", "variables": {"import": 1}}', "not allowed"),
    ('{"code": "print(1)", "languageType": "ruby"}', "languageType"),
    ('{"code": "print(1)", "languageType": 3}', "languageType"),
    ('{"code": "print(1)", "timeout": "soon"}', "timeout"),
    ('{"code": "print(1)", "timeout": -1}', "timeout"),
    ('{"code": "print(1)", "timeout": true}', "timeout"),
])
def test_bad_requests_are_400_json(client: FlaskClient, data: str, fragment: str) -> None:
    response = client.post("/runcode", data=data, content_type="application/json")
    assert response.status_code == 400
    assert fragment in response.get_json()["error"]


def test_bad_get_request_is_400(client: FlaskClient) -> None:
    response = client.get("/runcode", query_string={"languageType": "python"})
    assert response.status_code == 400 and "code" in response.get_json()["error"]


def test_unknown_route_is_404_json(client: FlaskClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404 and response.get_json() == {"error": "no such route"}


@pytest.mark.parametrize("method, path", [("PUT", "/runcode"), ("DELETE", "/runcode"), ("POST", "/image/x.png"),
                                          ("POST", "/healthz")])
def test_wrong_method_is_405_json(client: FlaskClient, method: str, path: str) -> None:
    response = client.open(path, method=method)
    assert response.status_code == 405
    assert "not allowed" in response.get_json()["error"]


def test_body_over_the_limit_is_413_json(make_app: Callable[..., Flask]) -> None:
    client = make_app(max_request_bytes=4096).test_client()
    response = client.post("/runcode", json={"code": "print(1)  # " + "x" * 5000})
    assert response.status_code == 413
    assert "4096" in response.get_json()["error"]
    assert client.post("/runcode", json={"code": "print(1)"}).status_code == 200


def test_pool_exhaustion_is_503_and_the_pool_recovers(live_server: Callable[..., str]) -> None:
    # The long runs hold all three sandboxes for 12 s (under a 60 s limit): time enough, on a slow runner
    # too, to see the pool busy and have a fourth request refused after its 0.5 s wait before any ends.
    url = live_server(queue_wait_seconds=0.5, timeout_seconds=60)
    slots = 3
    assert wait_until(lambda: requests.get(f"{url}/readyz", timeout=5).json()["pool"]["ready"] == slots, 60)
    results: list[int] = []
    started = threading.Barrier(slots + 1)

    def occupy() -> None:
        started.wait()
        results.append(requests.post(f"{url}/runcode", json={"code": "import time; time.sleep(12)"}, timeout=120)
                       .status_code)

    threads = [threading.Thread(target=occupy) for _ in range(slots)]
    for thread in threads:
        thread.start()
    started.wait()
    all_busy = wait_until(lambda: requests.get(f"{url}/readyz", timeout=5).json()["pool"]["busy"] == slots, 8)
    assert all_busy, "the three long runs never occupied the pool"
    busy = requests.get(f"{url}/readyz", timeout=5)
    assert busy.status_code == 200, "a center whose every sandbox is busy can still serve: a balancer keeps it"
    response = requests.post(f"{url}/runcode", json={"code": "print(1)"}, timeout=60)
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert "busy" in response.json()["error"]
    for thread in threads:
        thread.join()
    assert results == [200] * slots
    assert wait_until(lambda: requests.get(f"{url}/readyz", timeout=5).json()["pool"]["ready"] == slots, 60)
    recovered = requests.post(f"{url}/runcode", json={"code": "print('back')"}, timeout=60)
    assert recovered.status_code == 200 and recovered.json()["output"] == "back\n"


def test_healthz_and_readyz(client: FlaskClient) -> None:
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["ready"] is True and body["database"] == "ok"
    assert body["pool"]["slots"] == 3 and body["pool"]["ready"] >= 1
    assert set(body["pool"]) >= {"slots", "ready", "busy", "starting"}


def test_readyz_is_503_when_the_database_is_unreachable(make_app: Callable[..., Flask]) -> None:
    client = make_app(database_url="postgresql+psycopg2://nobody:x@127.0.0.1:1/none").test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["database"].startswith("unavailable")


def test_head_on_runcode_never_runs_a_program(client: FlaskClient) -> None:
    response = client.head("/runcode", query_string={"code": "print(1)"})
    assert response.status_code == 405


def test_cors_is_granted_to_listed_origins_only(make_app: Callable[..., Flask]) -> None:
    client = make_app(cors_origins=("https://app.example",)).test_client()
    preflight = client.options("/runcode", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    granted = client.post("/runcode", json={"code": "print(1)"}, headers={"Origin": "https://app.example"})
    assert granted.headers["Access-Control-Allow-Origin"] == "https://app.example"
    refused = client.options("/runcode", headers={"Origin": "https://evil.example",
                                                  "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in refused.headers
    default_client = make_app().test_client()
    response = default_client.post("/runcode", json={"code": "print(1)"}, headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_no_images_collected_when_max_images_is_zero(make_app: Callable[..., Flask]) -> None:
    body = run(make_app(max_images=0).test_client(), code=PLOT).get_json()
    assert body["status"] == "ok" and body["images"] == {}


def test_images_older_than_the_retention_period_are_deleted(make_app: Callable[..., Flask], tmp_path) -> None:
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import update

    from center import EXTENSION_KEY
    from models import Image

    keeper = make_app()
    client = keeper.test_client()
    old_url, new_url = (next(iter(run(client, code=PLOT).get_json()["images"].values())) for _ in range(2))
    old_name = old_url.rsplit("/", 1)[1]
    with keeper.extensions[EXTENSION_KEY].database() as db:
        db.execute(update(Image).where(Image.filename == old_name)
                   .values(created_at=datetime.now(timezone.utc) - timedelta(days=10)))
        db.commit()
    assert client.get(old_url.removeprefix("http://localhost")).status_code == 200
    sweeping = make_app(image_retention_days=7).test_client()  # same data folder: the same SQLite file
    # The sweep runs once at start, in the background: waited for, with a deadline that only bounds a hang.
    assert wait_until(lambda: sweeping.get(old_url.removeprefix("http://localhost")).status_code == 404, 60)
    assert sweeping.get(new_url.removeprefix("http://localhost")).status_code == 200
