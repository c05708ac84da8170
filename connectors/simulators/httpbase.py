"""Shared plumbing for the provider simulators: a threaded HTTP/1.1 server,
request/response value objects, a regex route table and multipart helpers.

A simulator subclasses `SimServerBase` and implements `handle(request)`; the
server takes care of sockets, keep-alive, Content-Length and quiet logging.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

JSON_CONTENT_TYPE = "application/json; charset=UTF-8"


@dataclass
class HTTPRequest:
    """One request as the application sees it (outer HTTP or inner batch part)."""

    method: str
    path: str  # percent-decoded, without query
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes = b""
    raw_path: str = ""  # still percent-encoded; what routes match against

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def params(self, name: str) -> list[str]:
        return list(self.query.get(name, ()))

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8")) if self.body else None


@dataclass
class HTTPResponse:
    status: int
    body: bytes = b""
    content_type: str = JSON_CONTENT_TYPE
    headers: list[tuple[str, str]] = field(default_factory=list)
    drop: bool = False  # close the socket without answering

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8")) if self.body else None


def json_response(status: int, obj: Any, headers: Iterable[tuple[str, str]] = ()) -> HTTPResponse:
    body = json.dumps(obj, separators=(",", ":")).encode("ascii")
    return HTTPResponse(status=status, body=body, headers=list(headers))


def drop_response() -> HTTPResponse:
    return HTTPResponse(status=0, drop=True)


def split_target(target: str) -> tuple[str, str, dict[str, list[str]]]:
    """Split a request target (path or absolute URL) into raw path, decoded path, query."""
    parts = urlsplit(target)
    raw = parts.path or "/"
    return raw, unquote(raw), parse_qs(parts.query, keep_blank_values=True)


# ---------------------------------------------------------------- routing


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Callable[..., HTTPResponse]
    name: str
    cost: int = 0  # quota units, simulator-specific meaning
    auth: bool = True


class Router:
    """Ordered regex dispatch table. Patterns match the raw (still quoted) path in
    full; named groups are percent-decoded before they reach the handler."""

    def __init__(self) -> None:
        self._routes: list[Route] = []

    def add(
        self,
        method: str,
        pattern: str,
        handler: Callable[..., HTTPResponse],
        *,
        name: str | None = None,
        cost: int = 0,
        auth: bool = True,
    ) -> Route:
        route = Route(
            method=method.upper(),
            pattern=re.compile(pattern),
            handler=handler,
            name=name or getattr(handler, "__name__", pattern),
            cost=cost,
            auth=auth,
        )
        self._routes.append(route)
        return route

    def match(self, method: str, raw_path: str) -> tuple[Route, dict[str, str]] | None:
        for route in self._routes:
            if route.method != method.upper():
                continue
            m = route.pattern.fullmatch(raw_path)
            if m:
                return route, {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
        return None

    @property
    def routes(self) -> Sequence[Route]:
        return tuple(self._routes)


# ---------------------------------------------------------------- multipart


def header_param(content_type: str, param: str) -> str | None:
    msg = Message()
    msg["content-type"] = content_type
    value = msg.get_param(param)
    return value if isinstance(value, str) else None


def _split_head(block: bytes) -> tuple[bytes, bytes]:
    """Split at the first empty line, accepting CRLF or bare LF line endings."""
    m = re.search(rb"\r?\n\r?\n", block)
    if not m:
        return block, b""
    return block[: m.start()], block[m.end() :]


def _parse_header_lines(head: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    last: str | None = None
    for line in re.split(rb"\r?\n", head):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and last is not None:  # folded continuation
            headers[last] += line.decode("latin-1").rstrip()  # RFC 5322 unfolding
            continue
        name, _, value = line.decode("latin-1").partition(":")
        last = name.strip().lower()
        headers[last] = value.strip()
    return headers


def parse_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart body into (headers, payload) parts; CRLF or bare LF."""
    delim = re.compile(rb"(?:^|\r?\n)--" + re.escape(boundary.encode("latin-1")) + rb"(--)?[ \t]*")
    pieces = delim.split(body)  # [preamble, closing?, chunk, closing?, chunk, ...]
    parts: list[tuple[dict[str, str], bytes]] = []
    for closing, chunk in zip(pieces[1::2], pieces[2::2], strict=False):
        if closing:  # "--boundary--": only the epilogue follows
            break
        chunk = re.sub(rb"^\r?\n", b"", chunk, count=1)
        head, payload = _split_head(chunk)
        parts.append((_parse_header_lines(head), payload))
    return parts


def parse_http_message(data: bytes) -> HTTPRequest:
    """Parse an application/http request (request line, headers, body)."""
    m = re.match(rb"\s*([^\r\n]*)(\r?\n|$)", data)
    request_line = m.group(1).decode("latin-1").split() if m else []
    if len(request_line) < 2:
        raise ValueError(f"bad request line: {request_line!r}")
    method, target = request_line[0], request_line[1]
    rest = data[m.end() :] if m else b""
    if rest.startswith((b"\r\n", b"\n")):  # no headers at all
        head, body = b"", rest.split(b"\n", 1)[1]
    else:
        head, body = _split_head(rest)
    headers = _parse_header_lines(head)
    length = headers.get("content-length", "")
    if length.isdigit():
        body = body[: int(length)]
    raw_path, path, query = split_target(target)
    return HTTPRequest(
        method=method.upper(),
        path=path,
        query=query,
        headers=headers,
        body=body,
        raw_path=raw_path,
    )


def build_multipart(
    parts: Iterable[tuple[Sequence[tuple[str, str]], bytes]], boundary: str
) -> bytes:
    out: list[bytes] = []
    for headers, payload in parts:
        out.append(b"--" + boundary.encode("ascii") + b"\r\n")
        for name, value in headers:
            out.append(f"{name}: {value}\r\n".encode("latin-1"))
        out.append(b"\r\n")
        out.append(payload)
        out.append(b"\r\n")
    out.append(b"--" + boundary.encode("ascii") + b"--\r\n")
    return b"".join(out)


def serialize_http_response(resp: HTTPResponse, reason: str) -> bytes:
    head = [f"HTTP/1.1 {resp.status} {reason}", f"Content-Type: {resp.content_type}"]
    head += [f"{k}: {v}" for k, v in resp.headers]
    head.append(f"Content-Length: {len(resp.body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + resp.body


# ---------------------------------------------------------------- server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer carries Content-Length
    timeout = 120  # idle keep-alive connections give up eventually
    disable_nagle_algorithm = True  # else small responses wait ~40 ms for delayed ACKs
    server: SimHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        # Quiet: request lines carry tokens in batch bodies and paths carry emails.
        return

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        body = self._read_body()
        raw_path, path, query = split_target(self.path)
        request = HTTPRequest(
            method=self.command,
            path=path,
            query=query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            raw_path=raw_path,
        )
        try:
            response = self.server.app.handle(request)
        except Exception as exc:  # a simulator bug must not kill the connection silently
            response = json_response(
                500, {"error": {"code": 500, "message": f"simulator error: {exc!r}"}}
            )
        if response.drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        # One write for head and body: fewer syscalls and no Nagle stalls.
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(response.body)
        self.flush_headers()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch


class SimHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: SimServerBase) -> None:
        self.app = app
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_all_connections(self) -> None:
        # Lets clients with pooled keep-alive sockets notice a restart at once.
        with self._conns_lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class SimServerBase:
    """Lifecycle of a simulator: bind, serve in a daemon thread, stop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._requested_port = port
        self._server: SimHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def handle(self, request: HTTPRequest) -> HTTPResponse:  # pragma: no cover - abstract
        raise NotImplementedError

    def start(self) -> SimServerBase:
        if self._server is not None:
            return self
        self._server = SimHTTPServer((self.host, self._requested_port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_all_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator not started")
        return int(self._server.server_address[1])

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def __enter__(self) -> SimServerBase:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
