"""POST/GET /runcode: validate, run in a fresh sandbox, store the images, answer (504 on timeout), or stream."""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import replace
from typing import Any, NamedTuple

from flask import Response, g, request
from werkzeug.exceptions import MethodNotAllowed

from sandbox.contract import MAX_JOB_BYTES
from server.api.answers import answer_report
from server.api.http import guarded_blueprint, json_body
from server.api.streaming import RunInThread, requested_format, stream_answer
from server.containers.agent_client import Listener
from server.containers.docker_sandboxes import Sandbox
from server.egress.policy import Pattern
from server.errors import BadRequest, PayloadTooLarge
from server.run_requests import parse_flag, parse_run_request
from server.services import Services, services

blueprint = guarded_blueprint("runs", __name__)


class EncodedRun(NamedTuple):
    """What a run needs once its request is read: the agent's job as JSON bytes, and two facts about it."""

    language: str
    timeout: float
    job: bytes
    inline: bool  # rich results' images as base64 (the body's "inline", or ?inline=1)
    network: tuple[Pattern, ...]  # what the run may reach through the egress proxy; (): nothing


def _parse_body(svc: Services, session_network: tuple[Pattern, ...] | None) -> EncodedRun:
    """The validated request, encoded at once: nothing parsed outlives this call. A session's cell
    (`session_network` not None) reaches what its session may, and takes no `network` of its own."""
    fields: Any = json_body() if request.method == "POST" else request.args.to_dict()
    if session_network is not None and isinstance(fields, dict):
        refuse_cell_network(fields.get("network"))
        fields = {**fields, "network": {"allow": []}}
    run = parse_run_request(fields, svc.config)
    if session_network is not None:
        run = replace(run, network=session_network)
    inline = run.inline or parse_flag(request.args.get("inline"), "inline")
    svc.sandboxes.warm_up.note(run.language, run.code)
    try:
        text = json.dumps(run.job(svc.config), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise BadRequest("variables hold NaN or Infinity, which JSON does not allow") from None
    try:
        job = text.encode()
    except UnicodeEncodeError:
        raise BadRequest("the request holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text") from None
    return EncodedRun(run.language, run.timeout, job, inline, run.network)


def refuse_cell_network(network: Any) -> None:
    """BadRequest when a cell names a network of its own: a session's is set for the session."""
    if network is not None:
        raise BadRequest("a cell reaches what its session may: set it with PUT /sessions/<id>/network "
                         "(or 'network' when creating the session)")


def read_run_request(svc: Services, session_network: tuple[Pattern, ...] | None = None) -> EncodedRun:
    """Parse and validate the request (a one-shot run's, or a session's cell when `session_network` is given)
    within the body budget, so that concurrent large bodies cannot together take the center's memory; the
    parsed form is let go before the run."""
    with svc.body_budget.reserve(request.content_length or 0, svc.config.queue_wait_seconds):
        run = _parse_body(svc, session_network)
    if len(run.job) > MAX_JOB_BYTES:
        raise PayloadTooLarge(f"the program and its variables take {len(run.job)} bytes once encoded, "
                              f"over the sandbox's limit of {MAX_JOB_BYTES}")
    return run


def run_with_egress(svc: Services, sandbox: Sandbox, run: EncodedRun,
                    listener: Listener | None = None) -> dict[str, Any]:
    """The run in its sandbox; while it may reach the network, through a gate of its own, whose log is the
    report's `network` (the gate is closed, its connections cut, when the run ends)."""
    if not run.network or svc.egress is None:
        return svc.sandboxes.run(sandbox, run.job, run.timeout, listener)
    gate = svc.egress.open(sandbox.socket_dir, run.network)
    try:
        report = svc.sandboxes.run(sandbox, run.job, run.timeout, listener)
    finally:
        gate.close()
    report["network"] = gate.take_log()
    return report


@blueprint.route("/runcode", methods=["GET", "POST"])
def run_code() -> tuple[Response, int]:
    """POST/GET /runcode: validate, run in a fresh sandbox, store images and files, answer (504 on timeout)."""
    svc = services()
    if request.method == "HEAD":  # Flask adds HEAD to GET routes; a HEAD must never run a program
        raise MethodNotAllowed(valid_methods=["GET", "POST"])
    run = read_run_request(svc)
    fmt = requested_format()
    with ExitStack() as held:
        sandbox = held.enter_context(svc.pool.sandbox(svc.config.queue_wait_seconds))
        g.slot = sandbox.slot
        if fmt is None:
            report = run_with_egress(svc, sandbox, run)
            return answer_report(svc, report, run.language, inline=run.inline)
        slot = held.pop_all()  # the streamed run's thread gives the sandbox back when it ends

        def run_streamed(listener: Listener) -> dict[str, Any]:
            with slot:
                return run_with_egress(svc, sandbox, run, listener)

        return stream_answer(svc, fmt, run.language, RunInThread(run_streamed), inline=run.inline)
