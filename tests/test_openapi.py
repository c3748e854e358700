"""/openapi.json: a valid OpenAPI document that lists every route, field, status and error body of the contract,
that real answers conform to, and that schemathesis fuzzes the API from without a server error."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

import pytest
import requests
from conftest import CI, unavailable, wait_until
from flask import Flask

try:
    import schemathesis
    from openapi_spec_validator import validate as validate_spec
    from schemathesis.checks import CHECKS, load_all_checks
except ImportError as e:  # pragma: no cover - depends on the machine
    schemathesis = None
    IMPORT_ERROR: str | None = f"{e.name} is not installed (pip install -r requirements.txt)"
else:
    IMPORT_ERROR = None

pytestmark = pytest.mark.docker

# SPEC.md, "Errors": every status of its table, and the header each one must carry.
SPEC_ERROR_STATUSES = {400: None, 401: "WWW-Authenticate", 404: None, 405: "Allow", 413: None,
                       503: "Retry-After", 502: None, 500: None}
SPEC_RESULT_FIELDS = {"output", "stderr", "exit_code", "status", "duration_ms", "result", "images", "files",
                      "skipped", "error", "results"}
SPEC_STATUSES = {"ok", "error", "timeout", "oom", "output_limit"}
SPEC_REQUEST_FIELDS = {"code", "languageType", "language", "variables", "timeout", "files", "inline", "network"}
# Routes of the app that are files, not API operations.
UNDOCUMENTED_ENDPOINTS = {"static", "web.docs_asset"}
PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nprint('plotted')"


@pytest.fixture(autouse=True)
def _needs_openapi_tools() -> None:
    if IMPORT_ERROR:
        unavailable(IMPORT_ERROR)


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local $ref (#/components/...) to what it names."""
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def documented_response(document: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any]:
    """The response object the document gives for this status of this operation."""
    responses = document["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} does not document {status}"
    return resolve(document, responses[str(status)])


def flask_path(rule: str) -> str:
    """A werkzeug rule as an OpenAPI path: /image/<path:filename> -> /image/{filename}."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


@pytest.fixture
def document(client) -> dict[str, Any]:
    """The document as the server serves it."""
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return response.get_json()


def test_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate_spec(document)
    assert document["openapi"].startswith("3.")
    assert document["servers"] == [{"url": "/"}]


def test_document_lists_every_route_and_method(app: Flask, document: dict[str, Any]) -> None:
    served: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint in UNDOCUMENTED_ENDPOINTS or rule.endpoint.startswith("e2b_"):
            continue  # E2B's API (/e2b) is E2B's to document: it is served for E2B's SDK (tests/test_e2b.py)
        methods = {m.lower() for m in rule.methods or ()} - {"options", "head"}
        served.setdefault(flask_path(rule.rule), set()).update(methods)
    for path in ("/runcode", "/image/{filename}", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/"):
        assert path in served, f"the app has no route {path}"
    documented = {path: set(item) - {"head", "parameters"} for path, item in document["paths"].items()}
    assert documented == served
    assert served["/runcode"] == {"get", "post"}
    # HEAD: images answer it (SPEC); /runcode refuses it, so that a HEAD never runs a program.
    assert set(documented_response(document, "/image/{filename}", "head", 200)["headers"]) >= {
        "ETag", "Cache-Control", "X-Content-Type-Options"}
    assert list(document["paths"]["/runcode"]["head"]["responses"]) == ["405"]


def test_document_has_every_field_status_and_error_of_the_spec(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    request = schemas["RunRequest"]
    assert set(request["properties"]) == SPEC_REQUEST_FIELDS and request["required"] == ["code"]
    parameters = {p["name"]: p for p in document["paths"]["/runcode"]["get"]["parameters"]}
    # Files travel in a JSON body only (base64 in a URL would be absurd).
    assert set(parameters) == SPEC_REQUEST_FIELDS - {"files"} and all(p["in"] == "query" for p in parameters.values())
    assert parameters["code"]["required"] and "application/json" in parameters["variables"]["content"]

    result = schemas["RunResult"]
    assert set(result["properties"]) == SPEC_RESULT_FIELDS | {"image_error", "network"}
    assert set(result["required"]) == SPEC_RESULT_FIELDS - {"error"}
    assert set(result["properties"]["status"]["enum"]) == SPEC_STATUSES

    body_errors = set(SPEC_ERROR_STATUSES) - {404, 405}
    for method in ("post", "get"):
        statuses = set(document["paths"]["/runcode"][method]["responses"])
        expected = {"200", "504"} | {str(s) for s in body_errors if method == "post" or s != 413}
        assert statuses == expected, f"{method.upper()} /runcode"
    timeout = documented_response(document, "/runcode", "post", 504)["content"]["application/json"]["schema"]
    assert timeout["allOf"][1]["properties"]["status"] == {"const": "timeout"}
    assert "404" in document["paths"]["/image/{filename}"]["get"]["responses"]
    assert "405" in document["paths"]["/runcode"]["head"]["responses"]

    for status, header in SPEC_ERROR_STATUSES.items():
        path, method = {404: ("/image/{filename}", "get"), 405: ("/runcode", "head")}.get(status, ("/runcode", "post"))
        response = documented_response(document, path, method, status)
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
        if header:
            assert resolve(document, response["headers"][header])["required"] is True
    assert schemas["Error"]["required"] == ["error"] and schemas["Error"]["additionalProperties"] is False


def test_security_follows_the_servers_tokens(make_app: Callable[..., Flask]) -> None:
    open_doc = make_app().test_client().get("/openapi.json").get_json()
    closed_doc = make_app(auth_tokens=["s3cret"]).test_client().get("/openapi.json").get_json()
    for method in ("get", "post"):
        assert open_doc["paths"]["/runcode"][method]["security"] == [{}, {"bearerAuth": []}]
        assert closed_doc["paths"]["/runcode"][method]["security"] == [{"bearerAuth": []}]
    validate_spec(closed_doc)
    scheme = closed_doc["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path in ("/image/{filename}", "/healthz", "/readyz"):
        assert "security" not in closed_doc["paths"][path]["get"]


def load_schema(base_url: str, **config: Any) -> Any:
    """The server's own /openapi.json, loaded by schemathesis."""
    settings = schemathesis.Config.from_dict(config) if config else None
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=settings)


def conforms(schema: Any, path: str, method: str, response: requests.Response) -> None:
    """The response's status is documented for the operation, and its body matches the documented schema."""
    operation = schema[path][method]
    assert str(response.status_code) in operation.definition.raw["responses"], (
        f"{method} {path} answered an undocumented {response.status_code}: {response.text[:300]}")
    operation.validate_response(response)


def test_real_answers_conform_to_the_document(live_server: Callable[..., str]) -> None:
    base = live_server(max_request_bytes=4096)
    schema = load_schema(base)

    plot = requests.post(f"{base}/runcode", json={"code": PLOT}, timeout=60)
    assert plot.status_code == 200 and plot.json()["output"] == "plotted\n"
    conforms(schema, "/runcode", "POST", plot)
    assert set(plot.json()) <= set(schema.raw_schema["components"]["schemas"]["RunResult"]["properties"])
    image_url = plot.json()["images"]["figure_1.png"]
    image = requests.get(image_url, timeout=10)
    assert image.status_code == 200 and image.headers["Content-Type"] == "image/png"
    conforms(schema, "/image/{filename}", "GET", image)
    for header in ("ETag", "Cache-Control", "X-Content-Type-Options", "Content-Security-Policy"):
        assert header in image.headers
    cached = requests.get(image_url, headers={"If-None-Match": image.headers["ETag"]}, timeout=10)
    assert cached.status_code == 304
    conforms(schema, "/image/{filename}", "GET", cached)
    head = requests.head(image_url, timeout=10)
    assert head.status_code == 200 and head.headers["ETag"] == image.headers["ETag"]

    failed = requests.get(f"{base}/runcode", params={"code": "raise SystemExit(3)"}, timeout=60)
    assert failed.status_code == 200 and failed.json()["status"] == "error" and failed.json()["exit_code"] == 3
    conforms(schema, "/runcode", "GET", failed)
    late = requests.post(f"{base}/runcode", json={"code": "print('late')\nimport time\ntime.sleep(30)",
                                                  "timeout": 1}, timeout=60)
    assert late.status_code == 504 and late.json()["status"] == "timeout"
    conforms(schema, "/runcode", "POST", late)

    errors = [
        ("/runcode", "POST", requests.post(f"{base}/runcode", data="not json", timeout=10), 400),
        ("/runcode", "GET", requests.get(f"{base}/runcode", params={"languageType": "ruby", "code": "1"},
                                         timeout=10), 400),
        ("/runcode", "POST", requests.post(f"{base}/runcode", json={"code": "x" * 5000}, timeout=10), 413),
        ("/runcode", "HEAD", requests.head(f"{base}/runcode", timeout=10), 405),
        ("/image/{filename}", "GET", requests.get(f"{base}/image/{'A' * 32}.png", timeout=10), 404),
        ("/image/{filename}", "GET", requests.get(f"{base}/image/..%2Fsecret", timeout=10), 404),
    ]
    for path, method, response, status in errors:
        assert response.status_code == status, (method, path, response.text)
        conforms(schema, path, method, response)
        if method != "HEAD":
            assert list(response.json()) == ["error"]
    assert errors[3][2].headers["Allow"] == "GET, POST"

    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/"):
        response = requests.get(f"{base}{path}", timeout=10)
        assert response.status_code == 200, path
        conforms(schema, path, "GET", response)


def test_unauthorized_and_busy_answers_conform(live_server: Callable[..., str]) -> None:
    base = live_server(auth_tokens=["s3cret"], queue_wait_seconds=0)
    schema = load_schema(base)
    denied = requests.post(f"{base}/runcode", json={"code": "print(1)"}, timeout=10)
    assert denied.status_code == 401 and denied.headers["WWW-Authenticate"].startswith("Bearer")
    conforms(schema, "/runcode", "POST", denied)

    # Another app on the same pool (it waits for slots) keeps all three slots busy sleeping; then this
    # app, which does not wait, finds no free sandbox. The sleeps last 8 s (under the 10 s limit): the
    # busy pool is seen and answered long before they end, on a slow runner too.
    patient = live_server()
    pool_state = lambda: requests.get(f"{base}/readyz", timeout=10).json()["pool"]  # noqa: E731
    assert wait_until(lambda: pool_state()["ready"] == 3, 120), "the pool never had its three sandboxes ready"
    sleepers = [threading.Thread(target=requests.post, args=(f"{patient}/runcode",),
                                 kwargs={"json": {"code": "import time; time.sleep(8)"}, "timeout": 60})
                for _ in range(3)]
    for sleeper in sleepers:
        sleeper.start()
    try:
        assert wait_until(lambda: pool_state()["busy"] == 3, 10), "the sleepers never held the three slots"
        ready = requests.get(f"{base}/readyz", timeout=10)  # every sandbox busy: still ready (SPEC)
        assert ready.status_code == 200 and ready.json()["ready"] is True
        conforms(schema, "/readyz", "GET", ready)
        busy = requests.post(f"{base}/runcode", json={"code": "print(1)"}, headers={"Authorization": "Bearer s3cret"},
                             timeout=10)
        assert busy.status_code == 503 and int(busy.headers["Retry-After"]) >= 1
        conforms(schema, "/runcode", "POST", busy)
    finally:
        for sleeper in sleepers:
            sleeper.join()


def no_server_error(ctx: Any, response: Any, case: Any) -> bool:
    """Custom check: no 5xx, except a run past its time limit (504), /readyz while no sandbox is ready (503)
    and a new session past max_sessions (503: the fuzzer makes many)."""
    if response.status_code == 504 and case.operation.path.endswith("/runcode"):
        assert response.json()["status"] == "timeout", response.text
    elif response.status_code == 503 and case.operation.path == "/readyz":
        assert response.json()["ready"] is False, response.text
    elif response.status_code == 503 and case.operation.path == "/sessions":
        assert "sessions of this center are in use" in response.json()["error"], response.text
    else:
        assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    return True


def valid_runs_are_accepted(ctx: Any, response: Any, case: Any) -> bool:
    """Custom check: a /runcode request the document calls valid runs the program (200, or 504 on timeout)."""
    if case.operation.path == "/runcode" and case.method in ("GET", "POST") and case.meta is not None:
        if case.meta.generation.mode.is_positive:
            assert response.status_code in (200, 504), f"valid request refused: {response.text[:500]}"
    return True


BUILT_IN_CHECKS = ("status_code_conformance", "content_type_conformance", "response_headers_conformance",
                   "response_schema_conformance", "unsupported_method", "allow_header_conformance")
FUZZ_CONFIG = {
    "generation": {"mode": "all", "max-examples": 25},
    "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True},
               "stateful": {"enabled": False}},
    "seed": 20240601 if CI else None,
}


@pytest.fixture
def api_schema(live_server: Callable[..., str]) -> Any:
    """The live server's document for schemathesis: 3 s runs, so that a generated endless program ends soon."""
    if IMPORT_ERROR:
        unavailable(IMPORT_ERROR)
    config = {key: value for key, value in FUZZ_CONFIG.items() if value is not None}
    return load_schema(live_server(timeout_seconds=3), **config)


if schemathesis is not None:
    fuzzed = schemathesis.pytest.from_fixture("api_schema")

    @fuzzed.parametrize()
    def test_fuzzed_requests_get_documented_answers_and_no_server_error(case: Any) -> None:
        load_all_checks()
        checks = CHECKS.get_by_names(list(BUILT_IN_CHECKS)) + [no_server_error, valid_runs_are_accepted]
        case.call_and_validate(checks=checks, timeout=60)


@pytest.mark.parametrize("path", ["a", "data.csv", "d/e/f.txt", "..a", "a..", ".hidden", "a b/ü.csv", "/etc/passwd",
                                  "..", ".", "a/../b", "a/./b", "a//b", "a/", "x\x00y", "../x", "a\x1bb", "a\u202eb"])
def test_the_documented_file_path_rule_is_the_servers(path: str) -> None:
    from server.api.openapi import WORKSPACE_PATH_PATTERN
    from server.errors import BadRequest
    from server.run_requests import workspace_path

    try:
        workspace_path(path)
        accepted = True
    except BadRequest:
        accepted = False
    assert bool(re.match(WORKSPACE_PATH_PATTERN, path)) == accepted
