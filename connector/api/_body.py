"""Reading request bodies safely: size limit while streaming, content type, JSON, DSP envelope.

:class:`BodyLimitMiddleware` enforces ``max_body_bytes`` on every route: a declared
``Content-Length`` above the limit is refused before the app runs, and a body that grows past
it while streaming (chunked uploads, lying headers) aborts the read with 413. Routes read bodies
with :func:`read_json_body` (415 for a non-JSON content type, 400 for malformed JSON) or
:func:`read_dsp_message` (plus the DSP envelope: ``@context`` array with the DSP context, the
expected ``@type``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from connector.api._errors import PayloadTooLargeError, UnsupportedMediaTypeError, error_response
from connector.errors import ValidationError
from vocab import DSP_CONTEXT

__all__ = [
    "JSON_MEDIA_TYPES",
    "BodyLimitMiddleware",
    "check_dsp_envelope",
    "content_length_problem",
    "read_dsp_message",
    "read_json_body",
    "too_large",
]

JSON_MEDIA_TYPES = frozenset({"application/json", "application/ld+json"})


def too_large(limit: int) -> PayloadTooLargeError:
    """The 413 for a body over ``limit`` bytes."""
    return PayloadTooLargeError(
        f"request body exceeds the limit of {limit} bytes", errors=[f"body: larger than {limit} bytes"]
    )


def content_length_problem(value: str | bytes | None, limit: int) -> ValidationError | None:
    """The error for a ``Content-Length`` header value over ``limit`` or not a number; None if
    it is fine or absent."""
    if value is None:
        return None
    try:
        declared = int(value)
    except ValueError:
        declared = -1
    if declared > limit:
        return too_large(limit)
    if declared < 0:
        return ValidationError("invalid Content-Length header", errors=["Content-Length: not a number"])
    return None


class BodyLimitMiddleware:
    """Pure ASGI middleware: 413 for bodies over ``max_bytes``, checked while streaming."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, dsp_path: str) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.dsp_path = dsp_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                exc = content_length_problem(value, self.max_bytes)
                if exc is not None:
                    response = error_response(exc, path=scope.get("path", ""), dsp_path=self.dsp_path)
                    await response(scope, receive, send)
                    return
        seen = 0
        limit = self.max_bytes

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise too_large(limit)
            return message

        await self.app(scope, limited_receive, send)


def _check_media_type(request: Request) -> None:
    raw = request.headers.get("content-type")
    media = (raw or "").split(";", 1)[0].strip().lower()
    if media not in JSON_MEDIA_TYPES:
        raise UnsupportedMediaTypeError(
            f"unsupported content type {raw!r}",
            errors=["Content-Type: must be application/json (or application/ld+json)"],
        )


async def read_json_body(request: Request, *, max_bytes: int) -> Any:
    """The parsed JSON body; 415 for a wrong content type, 413 over ``max_bytes``, 400 if malformed."""
    _check_media_type(request)
    chunks = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise too_large(max_bytes)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise ValidationError("empty request body", errors=["body: a JSON document is required"])
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationError("malformed JSON", errors=[f"body: {exc}"]) from None


def check_dsp_envelope(body: Any, expected_types: Iterable[str]) -> dict[str, Any]:
    """``body`` as a dict if it is a DSP message of one of ``expected_types``; else ValidationError."""
    expected = tuple(expected_types)
    if not isinstance(body, dict):
        raise ValidationError("a DSP message must be a JSON object", errors=["body: not an object"])
    problems = []
    ctx = body.get("@context")
    if ctx is None:
        problems.append(f"@context: missing; must be [{DSP_CONTEXT!r}]")
    elif isinstance(ctx, str) and "w3id.org/dspace/2024/1" in ctx:
        problems.append(
            "@context: DSP 2024-1 message; this endpoint speaks 2025-1 (@context must be an array)"
        )
    elif not isinstance(ctx, list) or not all(isinstance(c, str) for c in ctx):
        problems.append("@context: must be an array of strings (DSP 2025-1), got " + type(ctx).__name__)
    elif DSP_CONTEXT not in ctx:
        old = any("w3id.org/dspace/2024/1" in c or "w3id.org/dspace/v0.8" in c for c in ctx)
        hint = " (this looks like an older DSP version; this endpoint speaks 2025-1)" if old else ""
        problems.append(f"@context: must contain {DSP_CONTEXT!r}{hint}")
    mtype = body.get("@type")
    if mtype is None:
        problems.append(f"@type: missing; expected {' or '.join(expected)}")
    elif mtype not in expected:
        problems.append(f"@type: expected {' or '.join(expected)}, got {mtype!r}")
    if problems:
        raise ValidationError("invalid DSP message", errors=problems)
    return body


async def read_dsp_message(
    request: Request, *, max_bytes: int, expected_types: Iterable[str]
) -> dict[str, Any]:
    """Read and check a DSP message body (content type, size, JSON, ``@context``, ``@type``)."""
    return check_dsp_envelope(await read_json_body(request, max_bytes=max_bytes), expected_types)
