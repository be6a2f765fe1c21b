"""A fast lane for the hot DSP POST endpoints (decisions 0405, 0409).

Why: a DSP message costs its receiver the FastAPI request path (routing over every route of the
app, dependency solving, background tasks, five middleware layers): a yappi profile of the
negotiation bench put it at 20-26 % of a connector's CPU, more than the state change itself.

:class:`DspFastLane` is a pure ASGI middleware. A ``POST`` whose path matches one of its
:class:`FastRoute` patterns is served here: authenticate from the headers (the part that needs
the event loop), read the body, then in one worker thread finish the authentication (token
signature and replay checks), parse the JSON and run the route's handler; send the JSON reply,
then run what the handler deferred (sending the reply to the peer's message). ``dadam serve``
puts it in front of the whole framework (``ConnectionApp.fast_lane``), with the body limit of
its own. Everything else, and every route when no
``authenticate`` is given, goes to the application unchanged. The handlers are the very functions
the FastAPI routes call, and errors are rendered by the same :func:`error_response`, so a client
cannot tell the two paths apart (``tests/connector/test_serve_fast_lane.py`` compares them).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from connector.api._body import content_length_problem, too_large
from connector.api._errors import error_response
from connector.api._hop import ThreadHop, default_hop
from connector.errors import DadamError, ValidationError

__all__ = ["Authenticate", "DspFastLane", "FastRoute", "Handler"]

log = logging.getLogger("dadam.api")

#: ``handler(path parameters, JSON body, caller, defer) -> (status, JSON reply)``; runs in a
#: worker thread. ``defer(fn)`` registers ``fn`` to run on the event loop after the reply went out.
Handler = Callable[[Mapping[str, str], Any, Any, Callable[[Callable[[], None]], None]], tuple[int, Any]]


@dataclass(frozen=True, slots=True)
class FastRoute:
    """``POST <prefix><path>``; ``path`` as in FastAPI (``/negotiations/{pid}/request``).

    ``records_token``: the handler records the caller's token id in the replay store itself
    (``caller.replay``, a :class:`~connector.identity.ReplayClaim`), before it acts, in a
    statement it makes anyway (decision 0409). Otherwise the lane records it before the handler
    runs."""

    path: str
    handler: Handler
    records_token: bool = False


#: ``authenticate(headers, defer_replay)``: the checks that need the event loop (e.g. resolving
#: the caller's DID); it returns a function that finishes them in the worker thread (signature,
#: replay) and returns the caller. Either part raises a :class:`DadamError` to refuse. With
#: ``defer_replay`` the token id is left for the handler to record (``caller.replay``).
Authenticate = Callable[[Mapping[str, str], bool], Awaitable[Callable[[], Any]]]


class DspFastLane:
    """Serves the given POST routes under ``prefix`` without the framework (see the module doc).

    ``authenticate``: see :data:`Authenticate`; header names are lower-case, values decoded as
    latin-1, as in ASGI. ``max_bytes``: the body limit, enforced as :class:`BodyLimitMiddleware`
    does (give it when the lane is in front of that middleware; ``dadam serve`` puts the lane in
    front of the whole framework).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        prefix: str,
        routes: list[FastRoute],
        authenticate: Authenticate,
        dsp_path: str,
        max_bytes: int | None = None,
        hop: ThreadHop = default_hop,
    ) -> None:
        self.app = app
        self.hop = hop
        self.dsp_path = dsp_path
        self.authenticate = authenticate
        self.max_bytes = max_bytes
        self._exact: dict[str, FastRoute] = {}
        self._patterns: list[tuple[re.Pattern[str], FastRoute]] = []
        for r in routes:
            path = prefix.rstrip("/") + r.path
            if "{" not in path:
                self._exact[path] = r
            else:
                regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(path))
                self._patterns.append((re.compile(regex + r"\Z"), r))

    def _match(self, path: str) -> tuple[FastRoute, dict[str, str]] | None:
        route = self._exact.get(path)
        if route is not None:
            return route, {}
        for pattern, r in self._patterns:
            m = pattern.match(path)
            if m is not None:
                return r, m.groupdict()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        found = self._match(_route_path(scope))
        if found is None:
            await self.app(scope, receive, send)
            return
        route, params = found
        deferred: list[Callable[[], None]] = []
        try:
            headers: dict[str, str] = {}
            for k, v in scope["headers"]:  # the first of repeated headers, as Starlette's get()
                headers.setdefault(k.decode("latin-1"), v.decode("latin-1"))
            if self.max_bytes is not None:
                refused = content_length_problem(headers.get("content-length"), self.max_bytes)
                if refused is not None:
                    raise refused
            finish = await self.authenticate(headers, route.records_token)
            raw = await _read_body(receive, self.max_bytes)

            def work() -> tuple[int, Any]:  # one worker thread hop: the token's check, then the body
                caller = finish()
                claim = getattr(caller, "replay", None)
                try:
                    out = route.handler(params, _parse_json(raw), caller, deferred.append)
                except BaseException:
                    if claim is not None and not claim.recorded:
                        with contextlib.suppress(Exception):  # the token is spent whatever the outcome
                            claim.record()
                    raise
                if claim is not None and not claim.recorded:
                    log.error(
                        "POST %s: the handler did not record the token id; recorded after it", scope["path"]
                    )
                    claim.record()
                return out

            status, reply = await self.hop.run(work)
        except Exception as exc:
            if not isinstance(exc, DadamError):
                log.exception("unhandled error serving POST %s", scope["path"])
            await error_response(exc, path=scope["path"], dsp_path=self.dsp_path)(scope, receive, send)
            return
        out = orjson.dumps(reply)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-length", str(len(out)).encode()),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": out})
        for fn in deferred:
            try:
                fn()
            except Exception:
                log.exception("deferred work after POST %s failed", scope["path"])


def _route_path(scope: Scope) -> str:
    """The path routes match against: without the ``root_path`` prefix, as Starlette's router."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


async def _read_body(receive: Receive, max_bytes: int | None) -> bytes:
    chunks: list[bytes] = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ValidationError("the client went away before sending the whole body")
        chunk = message.get("body", b"")
        seen += len(chunk)
        if max_bytes is not None and seen > max_bytes:
            raise too_large(max_bytes)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _parse_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationError("request body is not JSON", errors=[str(exc)]) from None
