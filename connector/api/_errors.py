"""Errors at the HTTP edge: one mapping from dadam's exception tree to status codes and bodies.

* DSP routes answer with the protocol's error object for their area: ``CatalogError`` (catalog),
  ``ContractNegotiationError`` (negotiations), ``TransferError`` (transfers); see
  :func:`dsp_error_body`. The status is the exception's ``status_hint`` (400 malformed/invalid,
  404 unknown, 409 conflict, 413 too large, 415 wrong content type, 401 unauthenticated).
* Management routes answer with a plain JSON problem ``{"error", "message", "details"}``.
* Anything unexpected is a 500 whose body says only "internal error" (details go to the log).

The area of a request is ``request.state.dsp_area`` when a route set it, else derived from the
path: ``<dsp>/catalog...`` catalog, ``<dsp>/negotiations...`` negotiation, ``<dsp>/transfers...``
transfer. Other helpers' routers get the right bodies by living under those paths, or by setting
``request.state.dsp_area``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from catalog import model_errors
from connector.errors import DadamError, ValidationError
from vocab import DSP_CONTEXT

__all__ = [
    "DSP_ERROR_TYPES",
    "DspArea",
    "PayloadTooLargeError",
    "UnsupportedMediaTypeError",
    "area_for_path",
    "dsp_error_body",
    "error_response",
    "install_error_handlers",
    "problem_body",
]

log = logging.getLogger("dadam.api")

DspArea = Literal["catalog", "negotiation", "transfer"]
DSP_ERROR_TYPES: dict[str, str] = {
    "catalog": "CatalogError",
    "negotiation": "ContractNegotiationError",
    "transfer": "TransferError",
}
#: Placeholder pid when an error happens before the process is known (the schema requires both pids).
UNKNOWN_PID = "unknown"


class PayloadTooLargeError(ValidationError):
    """The request body is larger than ``DADAM_MAX_BODY_BYTES``."""

    status_hint = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(ValidationError):
    """The request body is not ``application/json`` (or ``application/ld+json``)."""

    status_hint = 415
    code = "unsupported_media_type"


def _pid(context: Mapping[str, Any], *names: str) -> str:
    for name in names:
        value = context.get(name)
        if value:
            return str(value)
    return UNKNOWN_PID


def dsp_error_body(area: str, exc: BaseException) -> dict[str, Any]:
    """The DSP error object for ``exc`` in ``area`` (catalog | negotiation | transfer).

    ``code`` is the exception's code, ``reason`` its reasons (never empty). For negotiation and
    transfer errors ``providerPid`` / ``consumerPid`` come from ``exc.context`` (keys
    ``providerPid``/``provider_pid``, ``consumerPid``/``consumer_pid``), ``"unknown"`` if absent.
    """
    try:
        err_type = DSP_ERROR_TYPES[area]
    except KeyError:
        raise ValueError(f"unknown DSP area {area!r}; use one of {', '.join(DSP_ERROR_TYPES)}") from None
    if isinstance(exc, DadamError):
        code, reasons, context = exc.code, exc.reasons(), exc.context
    else:
        code, reasons, context = "internal", ["internal error"], {}
    body: dict[str, Any] = {"@context": [DSP_CONTEXT], "@type": err_type}
    if area != "catalog":
        body["providerPid"] = _pid(context, "providerPid", "provider_pid")
        body["consumerPid"] = _pid(context, "consumerPid", "consumer_pid")
    body["code"] = str(code)
    body["reason"] = [str(r) for r in reasons] or [str(exc) or "error"]
    return body


def problem_body(exc: BaseException) -> dict[str, Any]:
    """The management API's problem body for ``exc``."""
    if isinstance(exc, DadamError):
        details = exc.errors if isinstance(exc, ValidationError) else []
        body: dict[str, Any] = {"error": exc.code, "message": exc.message, "details": list(details)}
        if exc.context:
            body["context"] = {k: v for k, v in exc.context.items() if isinstance(v, str | int | list)}
        return body
    return {"error": "internal", "message": "internal error", "details": []}


def area_for_path(path: str, dsp_path: str) -> str | None:
    """The DSP area of a request path, or None when it is not a DSP route."""
    if not path.startswith(dsp_path + "/"):
        return None
    rest = path[len(dsp_path) :]
    if rest.startswith("/negotiations"):
        return "negotiation"
    if rest.startswith("/transfers"):
        return "transfer"
    return "catalog"


def error_response(exc: BaseException, *, path: str, dsp_path: str, area: str | None = None) -> Response:
    """The HTTP response for ``exc`` raised while serving ``path``."""
    status = exc.status_hint if isinstance(exc, DadamError) else 500
    area = area or area_for_path(path, dsp_path)
    body = dsp_error_body(area, exc) if area else problem_body(exc)
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _from_http(exc: StarletteHTTPException) -> DadamError:
    err = DadamError(str(exc.detail) if exc.detail else "request failed")
    err.status_hint = exc.status_code
    err.code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden"}.get(
        exc.status_code, "http_error"
    )
    return err


def install_error_handlers(app: FastAPI, *, dsp_path: str) -> None:
    """Register the handlers that turn every exception into the right status and body."""

    def _respond(request: Request, exc: BaseException) -> Response:
        area = getattr(request.state, "dsp_area", None)
        return error_response(exc, path=request.url.path, dsp_path=dsp_path, area=area)

    async def on_dadam(request: Request, exc: Exception) -> Response:
        return _respond(request, exc)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        response = _respond(request, _from_http(exc))
        if exc.headers:  # e.g. Allow on 405, WWW-Authenticate on 401
            response.headers.update(exc.headers)
        return response

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _respond(request, ValidationError("invalid request", errors=model_errors(exc.errors())))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error serving %s %s", request.method, request.url.path)
        return _respond(request, exc)

    app.add_exception_handler(DadamError, on_dadam)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_unexpected)
