from __future__ import annotations

import inspect

import pytest
from pydantic import ValidationError as PydanticValidationError

import connector.errors as errors_mod
from connector.errors import (
    DadamError,
    LedgerError,
    LocalProtocolError,
    NotFoundError,
    ProtocolError,
    TransportError,
    ValidationError,
)
from connector.settings import Settings, did_web_for_url, settings_markdown


def test_every_error_is_documented_in_the_tree() -> None:
    doc = errors_mod.__doc__ or ""
    classes = [c for _, c in inspect.getmembers(errors_mod, inspect.isclass) if issubclass(c, DadamError)]
    assert len(classes) == len(errors_mod.__all__)
    for cls in classes:
        assert cls.__name__ in doc, f"{cls.__name__} missing from the drawn exception tree"
        assert cls.__doc__, f"{cls.__name__} has no docstring saying when it is raised"


def test_protocol_error_is_abstract() -> None:
    with pytest.raises(TypeError, match="abstract"):
        ProtocolError("x")
    err = LocalProtocolError("not allowed in OFFERED", context={"providerPid": "p1"})
    assert err.status_hint == 400
    assert str(err) == "not allowed in OFFERED (providerPid=p1)"


def test_errors_carry_status_reasons_and_codes() -> None:
    v = ValidationError("bad body", errors=["$.offer: required"])
    assert v.status_hint == 400
    assert v.reasons() == ["bad body", "$.offer: required"]
    assert NotFoundError("x").status_hint == 404
    t = TransportError("peer answered 503", status=503)
    assert t.retryable and t.status == 503
    assert LedgerError("no funds", code="exceeds_credits").code == "exceeds_credits"


def test_settings_env_prefix_and_secret_masking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DADAM_API_KEY", "s3cr3t-key")
    monkeypatch.setenv("DADAM_DATABASE_URL", "postgresql://u:pw@127.0.0.1/db")
    monkeypatch.setenv("DADAM_TRUSTED_DIDS", "did:web:a, did:web:b")
    s = Settings()
    assert s.api_key is not None and s.api_key.get_secret_value() == "s3cr3t-key"
    assert "s3cr3t-key" not in repr(s) and "pw@" not in repr(s)
    assert s.trusted_dids == ["did:web:a", "did:web:b"]
    assert s.effective_database_url() == "postgresql://u:pw@127.0.0.1/db"


def test_settings_derive_did_and_reject_bad_values() -> None:
    s = Settings(public_url="https://connector.example.com:8443/dsp/")
    assert s.did == "did:web:connector.example.com%3A8443:dsp"
    assert s.dsp_base_url == "https://connector.example.com:8443/dsp/api/dsp/2025-1"
    with pytest.raises(PydanticValidationError, match="public_url"):
        Settings(public_url="ftp://x")
    with pytest.raises(PydanticValidationError, match="token_ttl_seconds"):
        Settings(token_ttl_seconds=3600)  # DCP tokens live at most 5 minutes
    assert did_web_for_url("http://127.0.0.1:8181") == "did:web:127.0.0.1%3A8181"


def test_settings_table_lists_every_setting() -> None:
    table = settings_markdown()
    for name in Settings.model_fields:
        assert f"`DADAM_{name.upper()}`" in table
