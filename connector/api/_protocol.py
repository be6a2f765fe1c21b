"""The DSP fast lane inside uvicorn's HTTP protocol (decision 0412).

:class:`~connector.api._fastlane.DspFastLane` serves the hot DSP POSTs in front of the
framework, but still as an ASGI application: for each message uvicorn builds the ASGI scope and a
request cycle, starts a task, and the lane reads the body through ``receive`` and answers through
two ``send`` calls. A py-spy profile of the negotiation bench put that machinery at about a fifth of
a connector's time holding the GIL.

:func:`lane_protocol` makes a subclass of uvicorn's httptools protocol that serves those same
routes as the parser delivers them: headers, body, then
:meth:`~connector.api._fastlane.DspFastLane.serve_parsed` (the lane's own authentication, worker
thread hop, handler and error answers) and one socket write for the answer. Every other request,
and a lane request that arrives while an earlier one on the same connection is still being
answered (pipelining), goes to uvicorn's own code path unchanged, and so to the ASGI lane.
"""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from connector.api._body import content_length_problem
from connector.api._fastlane import DspFastLane, FastRoute, header_map, run_deferred
from connector.errors import DadamError

__all__ = ["LaneHttpProtocol", "fast_lanes", "lane_protocol"]


class _LaneRequest:
    """Stands where uvicorn keeps its request cycle, for a request the lane serves: it has the
    attributes uvicorn's protocol reads and writes on a cycle (``response_complete``,
    ``disconnected``, ``keep_alive``, ``message_event.set()``)."""

    __slots__ = (
        "chunks",
        "disconnected",
        "found",
        "headers",
        "keep_alive",
        "lane",
        "message_event",
        "path",
        "refused",
        "response_complete",
        "size",
        "too_large",
        "version",
    )

    def __init__(
        self,
        lane: DspFastLane,
        found: tuple[FastRoute, dict[str, str]],
        headers: dict[str, str],
        path: str,
        version: str,
        keep_alive: bool,
        refused: DadamError | None,
    ) -> None:
        self.lane = lane
        self.found = found
        self.headers = headers
        self.path = path
        self.version = version
        self.keep_alive = keep_alive
        self.refused = refused
        self.response_complete = False
        self.disconnected = False
        self.message_event = self
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_large = False

    def set(self) -> None:
        """uvicorn wakes a cycle's reader on a lost connection; nobody reads here."""


class LaneHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol serving :attr:`lanes` itself (see the module doc); make one
    with :func:`lane_protocol`."""

    lanes: tuple[DspFastLane, ...] = ()

    def on_headers_complete(self) -> None:
        if not self._lane_request():
            super().on_headers_complete()

    def _lane_request(self) -> bool:
        """Take the request just parsed when a lane serves it; False leaves it to uvicorn."""
        parser = self.parser
        if (
            parser.get_method() != b"POST"
            or self.expect_100_continue
            or self.limit_concurrency is not None
            or parser.should_upgrade()
        ):
            return False
        previous: Any = self.cycle
        if previous is not None and not previous.response_complete:
            return False  # pipelined behind a request still being answered: uvicorn queues it
        path = httptools.parse_url(self.url).path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        for lane in self.lanes:
            found = lane.match(path)
            if found is not None:
                break
        else:
            return False
        headers = header_map(self.headers)
        refused = None
        if lane.max_bytes is not None:
            refused = content_length_problem(headers.get("content-length"), lane.max_bytes)
        version = parser.get_http_version()
        self.cycle = _LaneRequest(  # type: ignore[assignment]
            lane,
            found,
            headers,
            self.root_path + path,
            version,
            version != "1.0" and parser.should_keep_alive(),
            refused,
        )
        return True

    def on_body(self, body: bytes) -> None:
        request: Any = self.cycle
        if type(request) is not _LaneRequest:
            super().on_body(body)
            return
        limit = request.lane.max_bytes
        request.size += len(body)
        if limit is not None and request.size > limit:
            request.too_large = True  # read to the end, not kept
            request.chunks.clear()
        elif request.refused is None:
            request.chunks.append(body)

    def on_message_complete(self) -> None:
        request: Any = self.cycle
        if type(request) is not _LaneRequest:
            super().on_message_complete()
            return
        route, params = request.found
        request.lane.serve_parsed(
            route,
            params,
            request.headers,
            b"".join(request.chunks),
            path=request.path,
            refused=request.refused,
            too_large_body=request.too_large,
            loop=self.loop,
            respond=functools.partial(self._respond, request),
        )
        request.chunks = []

    def _respond(
        self,
        request: _LaneRequest,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        deferred: list[Callable[[], None]],
    ) -> None:
        transport = self.transport
        if not request.disconnected and not transport.is_closing():
            content = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                content.extend((name, b": ", value, b"\r\n"))
            for name, value in headers:
                content.extend((name, b": ", value, b"\r\n"))
            if not request.keep_alive:
                content.append(b"connection: close\r\n")
            content.extend((b"\r\n", body))
            transport.write(b"".join(content))
            if self.access_log:
                client = f"{self.client[0]}:{self.client[1]}" if self.client else ""
                self.access_logger.info(
                    '%s - "POST %s HTTP/%s" %d', client, request.path, request.version, status
                )
        request.response_complete = True
        if not request.keep_alive:
            transport.close()
        run_deferred(deferred, request.path)
        self.on_response_complete()


def lane_protocol(lanes: list[DspFastLane]) -> type[LaneHttpProtocol]:
    """The protocol class to give uvicorn (``uvicorn.Config(http=...)``) so that it serves
    ``lanes`` itself; ``uvicorn`` needs ``httptools`` (``uvicorn[standard]``)."""
    return type("LaneHttpProtocol", (LaneHttpProtocol,), {"lanes": tuple(lanes)})


def fast_lanes(app: Any) -> list[DspFastLane]:
    """The :class:`DspFastLane` layers at the front of ``app`` (through ``fast_lane`` and
    ``app`` attributes, as :class:`~connector.dataplane._splice.ConnectionApp` and the lanes
    chain them), outermost first."""
    out: list[DspFastLane] = []
    seen: set[int] = set()
    node: Any = app
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, DspFastLane):
            out.append(node)
            node = node.app
            continue
        lane = getattr(node, "fast_lane", None)
        node = lane if isinstance(lane, DspFastLane) else None
    return out
