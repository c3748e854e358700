"""An MCP server (Model Context Protocol, the official `mcp` SDK) in front of a running center.

    python3 mcp_server.py --url http://127.0.0.1:5000 --token s3cret          # stdio, for desktop clients
    python3 mcp_server.py --url ... --token ... --http 127.0.0.1:8765        # streamable HTTP at /mcp

The URL and token may also come from CIA_URL and CIA_TOKEN. Every tool is a client of the center
(client.py): runs, sessions and files go through its HTTP API, so the center's limits and isolation hold.
A program that fails or times out is a tool result with isError set and its output; a center that is
down or refuses the request is a tool result with isError set and one sentence saying so.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import ipaddress
import json
import mimetypes
import os
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import anyio
from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult, ContentBlock, ImageContent, TextContent, ToolAnnotations
from pydantic import Field

from client import CenterUnreachableError, Client, ClientError, InvalidArgumentError, RunResult

DEFAULT_URL = "http://127.0.0.1:5000"
MAX_STREAM_CHARS = 40_000  # per stream in a tool result: a model's context is the scarce thing, not the center's
MAX_INLINE_IMAGE_BYTES = 5 * 1024 * 1024  # larger images are given as links only
MAX_READ_BYTES = 1024 * 1024  # read_file hands back at most this much of a file
INLINE_IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}  # what MCP clients render
MAX_CHART_JSON_CHARS = 4096  # a chart's data larger than this is described (type, title, size), not given whole
# What a display is given as, richest for a model first (images apart: they become image content).
DISPLAY_TEXT_TYPES = (("text/markdown", "Markdown"), ("text/html", "HTML"), ("text/latex", "LaTeX"),
                      ("application/json", "JSON"))
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")  # one machine's own names: "localhost" is either address

INSTRUCTIONS = """\
Runs Python or bash code in network-less sandboxes of a code interpreter center.
Use run_code without session_id for a self-contained program. For work in steps (load data, look at it,
plot, fix, plot again) call create_session once, then run_code with its session_id: variables, imports
and files persist between calls. Put input files in with upload_file, see them with list_files, read
results with read_file, and call end_session when done. Print what you want to see; the value of the
last expression is shown too. Figures come back as images, and what IPython.display shows (tables as
HTML, Markdown, LaTeX, JSON, images) comes back too."""

RUN_CODE_DESCRIPTION = """\
Run a Python or bash program in a sandbox with no network and return its stdout, stderr, status, the \
value of its last expression (as a notebook shows it) and the images (returned as images) and files it \
made. What a notebook would display (display(), IPython.display's HTML/Markdown/Latex/JSON/Image, a \
DataFrame as an HTML table, a figure's chart data) comes back as more content. Without session_id every \
call starts a fresh sandbox and nothing carries over; with a session_id \
from create_session the code runs in that session's persistent interpreter, where variables, imports and \
files carry over. Installed: numpy, pandas, scipy, matplotlib, seaborn, scikit-learn, sympy, pillow, \
statsmodels, openpyxl. No pip install, no downloads. Matplotlib figures are captured without savefig. \
A program that fails or times out gives an error result with its output and the error."""

Code = Annotated[str, Field(description="The complete program (or the next cell of a session). Print what "
                                        "you want to see.")]
Language = Annotated[Literal["python", "bash"], Field(description="The program's language.")]
SessionId = Annotated[str, Field(description="The session_id that create_session returned.")]
OptionalSessionId = Annotated[str | None, Field(description="Run in this session (from create_session) so "
                                                            "that state carries over; omit for a fresh sandbox.")]
Timeout = Annotated[float | None, Field(gt=0, allow_inf_nan=False,
                                        description="Time limit in seconds; it can only lower the center's own "
                                                    "limit (30 s unless configured).")]
WorkspacePath = Annotated[str, Field(description="A relative path in the session's working folder, e.g. "
                                                 "'data/sales.csv' (folders are created as needed).")]


def text_result(text: str, is_error: bool = False) -> CallToolResult:
    """A tool result of one text block."""
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=is_error)


def refusal(error: ClientError, url: str) -> CallToolResult:
    """A center that is down or refused the call, as an error result an LLM (and its user) can act on."""
    if isinstance(error, CenterUnreachableError):
        return text_result(f"The code interpreter center cannot be reached ({error.error}); is it running at {url}?",
                           True)
    return text_result(f"The code interpreter center refused the request (HTTP {error.status}): {error.error}", True)


def cut(text: str, limit: int = MAX_STREAM_CHARS) -> str:
    """At most `limit` characters of a stream, with a notice of what was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n[... {len(text) - limit} more characters cut]"


def describe_run(result: RunResult, session_id: str | None) -> str:
    """A run's result as text for a model: status first, then each part that is not empty."""
    facts = [f"exit code {result.exit_code}"]
    if result.duration_ms is not None:
        facts.append(f"{result.duration_ms:.0f} ms")
    if session_id:
        facts.append(f"session {session_id}, cell {result.execution_count}")
    parts = [f"status: {result.status} ({', '.join(facts)})"]
    if result.error:
        parts.append(f"error: {result.error}")
    for title, text in (("stdout", result.stdout), ("stderr", result.stderr)):
        if text:
            parts.append(f"--- {title} ---\n{cut(text).rstrip(chr(10))}")
    if result.result is not None:
        parts.append(f"--- result (value of the last expression) ---\n{cut(result.result)}")
    for title, links in (("images", result.images), ("files", result.files)):
        if links:
            parts.append(f"{title}:\n" + "\n".join(f"- {name}: {url}" for name, url in links.items()))
    if result.skipped:
        parts.append("left out:\n" + "\n".join(f"- {item.get('name')}: {item.get('reason')}"
                                                for item in result.skipped))
    if result.get("image_error"):
        parts.append(f"images not stored: {result.get('image_error')}")
    return "\n".join(parts)


def fetched_image(center: Client, name: str, url: str) -> tuple[bytes | None, str | None]:
    """An image's bytes from its URL (None when too large or unreachable), or a note on why it is left as a link."""
    try:
        data = center.fetch(url)
    except ClientError as e:
        return None, f"{name} could not be fetched ({e.error}): see its link"
    if len(data) > MAX_INLINE_IMAGE_BYTES:
        return None, f"{name} has {len(data)} bytes, too many to inline: see its link"
    return data, None


def image_blocks(center: Client, images: dict[str, str]) -> tuple[list[ContentBlock], list[str]]:
    """Each image the run made as MCP image content (fetched from its URL); notes on any left as a link."""
    blocks: list[ContentBlock] = []
    notes: list[str] = []
    for name, url in images.items():
        mime_type = mimetypes.guess_type(url)[0] or "application/octet-stream"
        if mime_type not in INLINE_IMAGE_TYPES:
            notes.append(f"{name} is {mime_type}: see its link")
            continue
        data, note = fetched_image(center, name, url)
        if data is None:
            notes.append(note or f"{name}: see its link")
            continue
        blocks.append(ImageContent(type="image", data=base64.b64encode(data).decode(), mime_type=mime_type))
    return blocks, notes


def bundle_image(center: Client, name: str, value: str, mime_type: str) -> tuple[ContentBlock | None, str | None]:
    """A display's PNG or JPEG (a URL, or base64 when the run asked for inline images) as image content."""
    if value.startswith(("http://", "https://", "/")):
        data, note = fetched_image(center, name, value)
        if data is None:
            return None, f"{note} ({value})"
        encoded = base64.b64encode(data).decode()
    else:
        encoded = value
        size = len(value) * 3 // 4
        if size > MAX_INLINE_IMAGE_BYTES:
            return None, f"{name} has about {size} bytes, too many to inline"
    return ImageContent(type="image", data=encoded, mime_type=mime_type), None


def describe_chart(chart: Mapping[str, Any], title: str) -> str:
    """A figure's chart data as JSON when it is small, else what it is (type, title, axes, element count)."""
    data = json.dumps(chart, ensure_ascii=False, separators=(",", ":"), default=str)
    if len(data) < MAX_CHART_JSON_CHARS:
        return f"--- {title}: chart data (JSON, enough to redraw it) ---\n{data}"
    elements = chart.get("elements")
    count = len(elements) if isinstance(elements, list) else 0
    return (f"--- {title}: chart ---\na {chart.get('type', 'unknown')} chart titled {chart.get('title')!r} "
            f"(x: {chart.get('x_label')!r}, y: {chart.get('y_label')!r}) with {count} elements; its data "
            f"({len(data)} characters of JSON) is too large to give here")


def display_text(data: Mapping[str, Any]) -> tuple[str, str] | None:
    """A display's richest text form for a model: (its kind, the text), or None when it has none beyond plain."""
    for mime_type, kind in DISPLAY_TEXT_TYPES:
        if mime_type in data:
            value = data[mime_type]
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=1, default=str)
            return f"{kind} ({mime_type})", text
    svg = data.get("image/svg+xml")
    if isinstance(svg, str) and len(svg) < MAX_CHART_JSON_CHARS:
        return "SVG (image/svg+xml)", svg
    return None


def display_blocks(center: Client, result: RunResult) -> tuple[list[ContentBlock], list[str]]:
    """The run's displays (`results`), in the order they were made, as content a model can read: Markdown,
    HTML, LaTeX or JSON as text, PNG and JPEG as images, else the plain text; a figure's chart data as JSON.
    What the rest of the tool result already holds is left out: an image of `images` (same URL), the last
    expression's plain text (in the description) and a display's plain text printed into stdout."""
    blocks: list[ContentBlock] = []
    notes: list[str] = []
    shown_images = set(result.images.values())
    budget = MAX_STREAM_CHARS  # for all the displays' text together
    for number, bundle in enumerate(result.results, 1):
        data = bundle.get("data")
        if not isinstance(data, Mapping):
            continue
        main = bool(bundle.get("is_main_result"))
        title = "result (last expression)" if main else f"display {number}"
        parts: list[ContentBlock] = []
        image = next(((mime_type, data[mime_type]) for mime_type in ("image/png", "image/jpeg")
                      if isinstance(data.get(mime_type), str)), None)
        if image is not None and image[1] not in shown_images:
            block, note = bundle_image(center, f"the image of {title}", image[1], image[0])
            if block is not None:
                parts.append(block)
            if note:
                notes.append(note)
        rich = display_text(data)
        plain = data.get("text/plain")
        if rich is not None:
            kind, text = rich
            parts.append(TextContent(type="text", text=f"--- {title} as {kind} ---\n{cut(text, max(budget, 200))}"))
            budget -= len(text)
        elif image is None and isinstance(plain, str) and plain.strip() and not (
                main and plain.strip() == (result.result or "").strip()) and plain not in result.stdout:
            parts.append(TextContent(type="text", text=f"--- {title} ---\n{cut(plain, max(budget, 200))}"))
            budget -= len(plain)
        chart = bundle.get("chart")
        if isinstance(chart, Mapping):
            parts.append(TextContent(type="text", text=describe_chart(chart, title)))
        blocks.extend(parts)
    return blocks, notes


class CodeInterpreterTools:
    """The tools, each a client of one center (a fresh HTTP client per call: calls run on worker threads)."""

    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        """Where the center is and how to authenticate."""
        self.url, self.token, self.timeout = url, token, timeout

    def client(self) -> Client:
        """A client of the center for one tool call."""
        return Client(self.url, self.token, self.timeout)

    def call(self, work: Callable[[Client], CallToolResult]) -> CallToolResult:
        """Run one tool's work; the center's refusals (and arguments the client refuses before asking it,
        such as a path out of the workspace) become error results, not protocol failures."""
        with self.client() as center:
            try:
                return work(center)
            except InvalidArgumentError as e:  # refused here, before any request: the center said nothing
                return text_result(str(e), True)
            except ClientError as e:
                return refusal(e, self.url)
            except ValueError as e:
                return text_result(str(e), True)

    def run_code(self, code: Code, language: Language = "python", session_id: OptionalSessionId = None,
                 timeout: Timeout = None) -> CallToolResult:
        """Run a program; its images come back as image content as well as links, its displays as more content."""
        def work(center: Client) -> CallToolResult:
            runner = center.attach(session_id) if session_id else center
            result = runner.run(code, language=language, timeout=timeout)
            displays, display_notes = display_blocks(center, result)
            images, notes = image_blocks(center, result.images)
            text = describe_run(result, session_id)
            if notes or display_notes:
                text += "\n" + "\n".join(notes + display_notes)
            return CallToolResult(content=[TextContent(type="text", text=text), *displays, *images],
                                  is_error=not result.ok)
        return self.call(work)

    def create_session(self) -> CallToolResult:
        """Start a session and name its session_id."""
        def work(center: Client) -> CallToolResult:
            session = center.session()
            idle = session.info.get("idle_timeout")
            unused = f" It ends by itself after {idle:g} s unused." if isinstance(idle, (int, float)) else ""
            return text_result(f"session_id: {session.id}\nA persistent Python interpreter and working folder. "
                               f"Pass this session_id to run_code, upload_file, list_files and read_file; call "
                               f"end_session when done.{unused}")
        return self.call(work)

    def upload_file(self, session_id: SessionId, path: WorkspacePath,
                    content_base64: Annotated[str, Field(description="The file's bytes, base64-encoded.")]
                    ) -> CallToolResult:
        """Write a file into a session's working folder."""
        try:
            content = base64.b64decode(content_base64, validate=True)
        except (binascii.Error, ValueError):
            return text_result("content_base64 is not valid base64", True)

        def work(center: Client) -> CallToolResult:
            stored = center.attach(session_id).upload(path, content)
            return text_result("\n".join(f"uploaded {item['path']} ({item['size']} bytes)" for item in stored))
        return self.call(work)

    def list_files(self, session_id: SessionId) -> CallToolResult:
        """The files of a session's working folder."""
        def work(center: Client) -> CallToolResult:
            files = center.attach(session_id).files()
            if not files:
                return text_result("the working folder is empty")
            return text_result("\n".join(f"{item['path']} ({item['size']} bytes)" for item in files))
        return self.call(work)

    def read_file(self, session_id: SessionId, path: WorkspacePath) -> CallToolResult:
        """A file of a session: text as text, an image as image content, other bytes as base64."""
        def work(center: Client) -> CallToolResult:
            data = center.attach(session_id).download(path)
            mime_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
            if mime_type in INLINE_IMAGE_TYPES and len(data) <= MAX_INLINE_IMAGE_BYTES:
                return CallToolResult(content=[
                    TextContent(type="text", text=f"{path}: {mime_type}, {len(data)} bytes"),
                    ImageContent(type="image", data=base64.b64encode(data).decode(), mime_type=mime_type)])
            shown, rest = data[:MAX_READ_BYTES], len(data) - MAX_READ_BYTES
            more = f"\n[... {rest} more bytes not shown]" if rest > 0 else ""
            try:
                return text_result(shown.decode("utf-8") + more)
            except UnicodeDecodeError:
                return text_result(f"{path} is binary ({mime_type}, {len(data)} bytes); base64:\n"
                                   f"{base64.b64encode(shown).decode()}{more}")
        return self.call(work)

    def end_session(self, session_id: SessionId) -> CallToolResult:
        """End a session; its sandbox and files are removed."""
        def work(center: Client) -> CallToolResult:
            center.attach(session_id).end()
            return text_result(f"session {session_id} ended")
        return self.call(work)


def build_server(url: str, token: str | None = None, timeout: float = 600.0) -> MCPServer:
    """The MCP server with its six tools, as a client of the center at `url`."""
    tools = CodeInterpreterTools(url, token, timeout)
    server = MCPServer("code-interpreter", instructions=INSTRUCTIONS, log_level="WARNING")
    server.add_tool(tools.run_code, name="run_code", description=RUN_CODE_DESCRIPTION,
                    annotations=ToolAnnotations(title="Run code", open_world_hint=False))
    server.add_tool(tools.create_session, name="create_session", description=(
        "Start a session: one sandbox kept alive, whose variables, imports and files persist between run_code "
        "calls. Returns its session_id. End it with end_session when done."),
        annotations=ToolAnnotations(title="Create a session", open_world_hint=False))
    server.add_tool(tools.upload_file, name="upload_file", description=(
        "Write a file (given as base64) into a session's working folder, where its code can open it by that "
        "relative path (e.g. pd.read_csv('data/sales.csv'))."),
        annotations=ToolAnnotations(title="Upload a file", open_world_hint=False))
    server.add_tool(tools.list_files, name="list_files", description=(
        "List the files in a session's working folder (recursively), with their sizes."),
        annotations=ToolAnnotations(title="List files", read_only_hint=True, open_world_hint=False))
    server.add_tool(tools.read_file, name="read_file", description=(
        "Read a file from a session's working folder: text comes back as text, an image as an image, other "
        "files as base64."),
        annotations=ToolAnnotations(title="Read a file", read_only_hint=True, open_world_hint=False))
    server.add_tool(tools.end_session, name="end_session", description=(
        "End a session: its sandbox, variables and files are removed. Ending an ended session does nothing."),
        annotations=ToolAnnotations(title="End a session", destructive_hint=True, idempotent_hint=True,
                                    open_world_hint=False))
    return server


def host_and_port(value: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) for --http."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """The address is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_every_address(host: str) -> bool:
    """The host is 0.0.0.0 or :: (bind every address of the machine)."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def transport_security(host: str) -> TransportSecuritySettings:
    """The SDK's Host and Origin checks for --http HOST: only the names of the bound host pass.

    Without them a web page the user opens could rebind its own DNS name to this address and call the tools
    (DNS rebinding). The SDK turns them on by itself only for 127.0.0.1, localhost and ::1; any other host
    (127.0.0.2, a specific address) would go unchecked, so they are always set here.
    """
    if is_every_address(host):
        # Bound to every address (only with --allow-remote): any name of the machine or of a proxy may reach it,
        # so none can be listed; Host and Origin go unchecked, as the SDK leaves them, and the proxy in front
        # must authenticate.
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    shown = f"[{host}]" if ":" in host else host
    names = [shown, *(name for name in LOOPBACK_NAMES if name != shown)] if shown in LOOPBACK_NAMES else [shown]
    # The bare name is the Host header of port 80; ":*" is the SDK's pattern for "with any port".
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[form for name in names for form in (name, f"{name}:*")],
        allowed_origins=[form for name in names for scheme in ("http", "https")
                         for form in (f"{scheme}://{name}", f"{scheme}://{name}:*")])


async def serve_http(server: MCPServer, host: str, port: int) -> None:
    """Serve streamable HTTP at /mcp; the socket is bound first, so port 0 works and the line names the real port."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # listening before the line below: a client that reads it may connect at once
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"mcp_server.py: serving MCP over streamable HTTP at http://{shown}:{bound}/mcp", file=sys.stderr, flush=True)
    app = server.streamable_http_app(transport_security=transport_security(host))
    await uvicorn.Server(uvicorn.Config(app, log_level="warning")).serve(sockets=[sock])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description="MCP server for the code interpreter center (stdio by default).")
    parser.add_argument("--url", default=os.environ.get("CIA_URL") or DEFAULT_URL,
                        help=f"the center's URL (env CIA_URL; default {DEFAULT_URL})")
    parser.add_argument("--token", default=os.environ.get("CIA_TOKEN") or None,
                        help="the center's bearer token (env CIA_TOKEN)")
    parser.add_argument("--http", metavar="HOST:PORT", type=host_and_port,
                        help="serve streamable HTTP at http://HOST:PORT/mcp instead of stdio")
    parser.add_argument("--allow-remote", action="store_true",
                        help="let --http bind a non-loopback address (anyone who reaches it runs code with the token)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the center's answer")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve over stdio, or over streamable HTTP with --http."""
    args = parse_args(argv)
    server = build_server(args.url, args.token, args.timeout)
    if args.http is None:
        server.run("stdio")
        return 0
    host, port = args.http
    if not is_loopback(host) and not args.allow_remote:
        # The MCP endpoint has no authentication of its own: whoever reaches it runs code with our token.
        print(f"mcp_server.py: --http {host}:{port} is reachable from other machines and the MCP endpoint has no "
              "authentication; bind 127.0.0.1 or pass --allow-remote behind a proxy that authenticates",
              file=sys.stderr)
        return 2
    anyio.run(serve_http, server, host, port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
