"""Operators' view: /metrics in Prometheus format, one structured log line per request, X-Request-ID."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])"


def scrape(client) -> dict[str, float]:
    """/metrics as {'name{label=value,...}': value}."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response.content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def test_metrics_count_executions_durations_pool_and_images(make_app: Callable[..., Flask]) -> None:
    client = make_app().test_client()
    client.post("/runcode", json={"code": "print(1)"})
    client.post("/runcode", json={"code": "1/0"})
    client.post("/runcode", json={"code": "echo hi", "languageType": "bash"})
    client.post("/runcode", json={"code": PLOT})
    metrics = scrape(client)
    assert metrics["code_interpreter_executions_total{language=python,status=ok}"] == 2
    assert metrics["code_interpreter_executions_total{language=python,status=error}"] == 1
    assert metrics["code_interpreter_executions_total{language=bash,status=ok}"] == 1
    assert metrics["code_interpreter_execution_duration_seconds_count{language=python}"] == 3
    assert metrics["code_interpreter_image_bytes_stored_total{}"] > 1000
    assert metrics["code_interpreter_pool_slots{}"] == 3
    expected = {"code_interpreter_pool_ready{}", "code_interpreter_pool_busy{}", "code_interpreter_pool_starting{}",
                "code_interpreter_sandbox_starts_total{}", "code_interpreter_sandbox_start_failures_total{}"}
    assert expected <= set(metrics)
    assert metrics["code_interpreter_http_requests_total{method=POST,status=200}"] == 4


@pytest.mark.parametrize("sent, echoed", [("abc-123_x.y", True), ("", False), ("bad id with spaces", False),
                                          ("x" * 200, False)])
def test_request_id_is_echoed_or_made(client, sent: str, echoed: bool) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": sent} if sent else {})
    request_id = response.headers["X-Request-ID"]
    if echoed:
        assert request_id == sent
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", request_id)


def test_one_structured_log_line_per_request(client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="center.access"):
        response = client.post("/runcode", json={"code": "print(1)"}, headers={"X-Request-ID": "trace-42"})
        client.post("/runcode", data="not json", content_type="application/json")
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "center.access"]
    assert len(lines) == 2
    first, second = lines
    assert first["request_id"] == "trace-42" == response.headers["X-Request-ID"]
    assert (first["status"], first["run_status"], first["path"]) == (200, "ok", "/runcode")
    assert isinstance(first["slot"], int) and first["duration_ms"] > 0
    assert (second["status"], second["slot"]) == (400, None)
