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

Under uvicorn, ``dadam serve`` and the test node go one step further: their HTTP protocol
(:mod:`connector.api._protocol`, decision 0412) hands the parsed request straight to
:meth:`DspFastLane.serve_parsed`, with no ASGI scope, task or ``receive``/``send`` in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from connector.api._body import content_length_problem, too_large
from connector.api._errors import error_response
from connector.api._hop import ThreadHop, default_hop
from connector.errors import DadamError, ValidationError

__all__ = ["Authenticate", "AuthenticateNow", "DspFastLane", "FastRoute", "Handler", "Respond"]

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
Authenticate = Callable[[Mapping[str, str], bool], Coroutine[Any, Any, Callable[[], Any]]]

#: ``authenticate_now(headers, defer_replay)``: :data:`Authenticate` without the event loop where
#: it can (the caller's DID document cached): the same function, or None when it would have to
#: wait. The lane's own HTTP protocol then needs no task for the request.
AuthenticateNow = Callable[[Mapping[str, str], bool], Callable[[], Any] | None]


class DspFastLane:
    """Serves the given POST routes under ``prefix`` without the framework (see the module doc).

    ``authenticate``: see :data:`Authenticate`; header names are lower-case, values decoded as
    latin-1, as in ASGI. ``max_bytes``: the body limit, enforced as :class:`BodyLimitMiddleware`
    does (give it when the lane is in front of that middleware; ``dadam serve`` puts the lane in
    front of the whole framework). ``authenticate_now``: see :data:`AuthenticateNow` (used by
    the lane's HTTP protocol, :mod:`connector.api._protocol`, only).
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
        authenticate_now: AuthenticateNow | None = None,
    ) -> None:
        self.app = app
        self.authenticate_now = authenticate_now
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

    def match(self, path: str) -> tuple[FastRoute, dict[str, str]] | None:
        """The route serving ``POST path`` (``path`` without the server's root path) and its
        path parameters; None when this lane does not serve it."""
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
        found = self.match(_route_path(scope))
        if found is None:
            await self.app(scope, receive, send)
            return
        route, params = found
        deferred: list[Callable[[], None]] = []
        try:
            headers = header_map(scope["headers"])
            if self.max_bytes is not None:
                refused = content_length_problem(headers.get("content-length"), self.max_bytes)
                if refused is not None:
                    raise refused
            finish = await self.authenticate(headers, route.records_token)
            raw = await _read_body(receive, self.max_bytes)
            status, reply = await self.hop.run(
                self._work(route, params, raw, finish, deferred, scope["path"])
            )
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
        run_deferred(deferred, scope["path"])

    def _work(
        self,
        route: FastRoute,
        params: Mapping[str, str],
        raw: bytes,
        finish: Callable[[], Any],
        deferred: list[Callable[[], None]],
        path: str,
    ) -> Callable[[], tuple[int, Any]]:
        """The worker thread's part: the token's check, then the body and the handler."""

        def work() -> tuple[int, Any]:
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
                log.error("POST %s: the handler did not record the token id; recorded after it", path)
                claim.record()
            return out

        return work

    # -- the same lane for an HTTP protocol that parsed the request itself ----------------------

    def serve_parsed(
        self,
        route: FastRoute,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        raw: bytes,
        *,
        path: str,
        refused: DadamError | None,
        too_large_body: bool,
        loop: asyncio.AbstractEventLoop,
        respond: Respond,
    ) -> None:
        """Serve a request that :mod:`connector.api._protocol` parsed, as :meth:`__call__`
        serves it, without ASGI: no task where ``authenticate_now`` answers, one hop to a worker
        thread, one ``respond(status, headers, body, deferred)`` on the loop's thread.

        ``refused``: the error the headers already gave (the Content-Length over the limit);
        ``too_large_body``: the body went over the limit (it was not kept). Both are reported
        in the order :meth:`__call__` finds them."""
        deferred: list[Callable[[], None]] = []

        def fail(exc: BaseException) -> None:
            if not isinstance(exc, DadamError):
                if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: not ours to answer
                    raise exc
                log.error("unhandled error serving POST %s", path, exc_info=exc)
            answer = error_response(exc, path=path, dsp_path=self.dsp_path)
            respond(answer.status_code, answer.raw_headers, bytes(answer.body), [])

        def served(ok: bool, value: Any) -> None:
            if not ok:
                fail(value)
                return
            try:
                status, reply = value
                out = orjson.dumps(reply)
            except Exception as exc:
                fail(exc)
                return
            respond(
                status,
                [(b"content-length", str(len(out)).encode()), (b"content-type", b"application/json")],
                out,
                deferred,
            )

        def authenticated(ok: bool, value: Any) -> None:
            if not ok:
                fail(value)
            elif too_large_body:
                fail(too_large(self.max_bytes or 0))
            else:
                self.hop.submit(self._work(route, params, raw, value, deferred, path), loop, served)

        if refused is not None:
            fail(refused)
            return
        if self.authenticate_now is not None:
            try:
                finish = self.authenticate_now(headers, route.records_token)
            except Exception as exc:
                fail(exc)
                return
            if finish is not None:
                authenticated(True, finish)
                return
        _on_loop(self.authenticate(headers, route.records_token), loop, authenticated)


#: ``respond(status, headers, body, deferred)``: write the answer, then run ``deferred``.
Respond = Callable[[int, list[tuple[bytes, bytes]], bytes, list[Callable[[], None]]], None]


def header_map(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Raw header pairs (names lower-case) as a dict: the first of repeated headers, as
    Starlette's ``get()``; latin-1, as in ASGI."""
    headers: dict[str, str] = {}
    for k, v in raw:
        headers.setdefault(k.decode("latin-1"), v.decode("latin-1"))
    return headers


def run_deferred(deferred: list[Callable[[], None]], path: str) -> None:
    """Run what a handler deferred until its answer went out; a failure is logged, not raised."""
    for fn in deferred:
        try:
            fn()
        except Exception:
            log.exception("deferred work after POST %s failed", path)


def _on_loop(
    coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop, done: Callable[[bool, Any], None]
) -> None:
    """Run ``coro`` in a task; then ``done(True, result)`` or ``done(False, exception)``."""

    def settle(task: asyncio.Task[Any]) -> None:
        _tasks.discard(task)
        if task.cancelled():
            done(False, asyncio.CancelledError())
        elif (exc := task.exception()) is not None:
            done(False, exc)
        else:
            done(True, task.result())

    task = loop.create_task(coro)
    _tasks.add(task)  # the loop holds its tasks weakly
    task.add_done_callback(settle)


_tasks: set[asyncio.Task[Any]] = set()


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
