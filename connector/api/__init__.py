"""HTTP edge of the connector: DSP routes, management routes, request bodies and error mapping.

Routers are built by factories that take their dependencies (services, the DSP caller
dependency, management auth dependencies) as parameters, so tests and other packages can pass
their own. :func:`connector.app.create_app` wires them together.
"""

from __future__ import annotations

from connector.api._auth import ANONYMOUS, ApiKeyAuth, anonymous_caller
from connector.api._body import (
    JSON_MEDIA_TYPES,
    BodyLimitMiddleware,
    check_dsp_envelope,
    read_dsp_message,
    read_json_body,
)
from connector.api._dsp import dsp_catalog_router, version_body, version_router
from connector.api._errors import (
    DSP_ERROR_TYPES,
    DspArea,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    area_for_path,
    dsp_error_body,
    error_response,
    install_error_handlers,
    problem_body,
)
from connector.api._fastlane import Authenticate, AuthenticateNow, DspFastLane, FastRoute
from connector.api._management import management_router

__all__ = [
    "ANONYMOUS",
    "DSP_ERROR_TYPES",
    "JSON_MEDIA_TYPES",
    "ApiKeyAuth",
    "Authenticate",
    "AuthenticateNow",
    "BodyLimitMiddleware",
    "DspArea",
    "DspFastLane",
    "FastRoute",
    "PayloadTooLargeError",
    "UnsupportedMediaTypeError",
    "anonymous_caller",
    "area_for_path",
    "check_dsp_envelope",
    "dsp_catalog_router",
    "dsp_error_body",
    "error_response",
    "install_error_handlers",
    "management_router",
    "problem_body",
    "read_dsp_message",
    "read_json_body",
    "version_body",
    "version_router",
]
