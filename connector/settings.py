"""One typed settings object for the whole connector.

Every setting is read from the environment with the prefix ``DADAM_`` (``DADAM_DATABASE_URL``),
or from a ``.env`` file in the working directory, else its default. Secrets are
:class:`pydantic.SecretStr`: their ``repr`` and ``str`` are masked, so they never leak into
logs or tracebacks. ``docs/configuration.md`` and the README table are generated from this class
(``dadam settings --markdown``); a test keeps them in step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "did_web_for_url", "settings_markdown"]


def did_web_for_url(url: str) -> str:
    """The did:web identifier of a connector reachable at ``url`` (port percent-encoded, path as ``:``)."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"not an absolute URL: {url!r}")
    host = parts.hostname
    if parts.port:
        host = f"{host}{quote(':')}{parts.port}"
    path = [p for p in parts.path.split("/") if p]
    return "did:web:" + ":".join([host, *path])


class Settings(BaseSettings):
    """dadam settings. Each field is one ``DADAM_<NAME>`` environment variable."""

    model_config = SettingsConfigDict(
        env_prefix="DADAM_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    # --- identity -----------------------------------------------------------------------------
    public_url: str = Field(
        "http://127.0.0.1:8181",
        description="Base URL where partners reach this connector; the did:web id is derived from it.",
    )
    participant_id: str | None = Field(
        None, description="This connector's DID. Default: did:web derived from public_url."
    )
    bpn: str | None = Field(None, description="Catena-X Business Partner Number (BPNL) of this participant.")
    key_algorithm: Literal["ES256", "Ed25519"] = Field(
        "ES256", description="Signing key type created on first start (ES256 is faster here)."
    )
    did_web_allow_http: bool = Field(
        False,
        description="Resolve did:web over plain http, for loopback hosts only (tests, demo). Never in production.",
    )
    token_ttl_seconds: int = Field(
        300, ge=10, le=300, description="Lifetime of self-issued DCP ID tokens (<= 5 min)."
    )
    token_leeway_seconds: int = Field(
        30, ge=0, le=300, description="Clock skew tolerated on exp, nbf and iat of received tokens."
    )
    did_cache_seconds: int = Field(300, ge=0, description="How long a resolved peer DID document is cached.")
    trusted_dids: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="If set, only these peer DIDs may call the DSP API (comma-separated or JSON list).",
    )

    # --- service ------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface the HTTP server binds to.")
    port: int = Field(8181, ge=1, le=65535, description="Port the HTTP server listens on.")
    dsp_path: str = Field("/api/dsp/2025-1", description="Path prefix of the DSP 2025-1 endpoints.")
    management_path: str = Field("/api/management/v1", description="Path prefix of the management API.")
    max_body_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Largest request body accepted on DSP and management APIs (413 above).",
    )
    api_key: SecretStr | None = Field(
        None,
        description="Management API key (header X-Api-Key). Unset: only OAuth2 bearer tokens are accepted.",
    )
    oauth_client_id: str = Field(
        "dadam-admin", description="Client id of the built-in OAuth2 token endpoint."
    )
    oauth_client_secret: SecretStr | None = Field(
        None,
        description="Client secret of the built-in token endpoint. Unset: the token endpoint is disabled.",
    )
    oauth_token_ttl_seconds: int = Field(3600, ge=60, description="Lifetime of management access tokens.")

    # --- storage ------------------------------------------------------------------------------
    data_dir: Path = Field(Path(".dadam"), description="Where keys and the default SQLite database live.")
    database_url: SecretStr | None = Field(
        None,
        description="SQLAlchemy URL, e.g. postgresql://user:pw@host/db. Default: SQLite file in data_dir.",
    )
    db_pool_size: int = Field(
        20,
        ge=1,
        description=(
            "PostgreSQL connections of one process: opened as needed, then kept open; never more "
            "(a request waits up to 30 s for a free one). Replicas x this must stay under the "
            "server's max_connections."
        ),
    )

    # --- data plane ---------------------------------------------------------------------------
    dataplane_embedded: bool = Field(
        True,
        description="Run the data plane (public data endpoint, token refresh, push inbox, push worker) in "
        "this process. false: `dadam dataplane` processes on the same database serve it.",
    )
    dataplane_public_url: str | None = Field(
        None,
        description="Public base URL of the data plane; EDRs and push inboxes point here. Default: public_url.",
    )
    dataplane_signaling_url: str | None = Field(
        None,
        description="Control plane: base URL of the data plane's signaling API (e.g. http://dp:8282/api/signaling); "
        "transfers (provided and requested: prepare, start, started, suspend, resume, terminate, completed) then drive "
        "the data plane over HTTP signaling, and a requested push lands in its inbox (decision 0452; needs "
        "dataplane_embedded=false and dataplane_signaling_secret). Unset: the data plane reads the shared database.",
    )
    dataplane_signaling_secret: SecretStr | None = Field(
        None,
        description="Shared secret (at least 32 characters) for the HS256 tokens of signaling calls in both "
        "directions. On `dadam dataplane`: set, it serves the signaling API under /api/signaling.",
    )
    dataplane_callback_url: str | None = Field(
        None,
        description="Base URL where the data plane calls the control plane back (signaling mode). "
        "Default: public_url + /api/signaling.",
    )
    dataplane_splice: bool = Field(
        True,
        description="Relay large S3 pulls with splice(2): the bytes move between the S3 and the client "
        "connection inside the kernel (Linux, uvicorn's httptools protocol, plain HTTP on both sides; decision "
        "0453). false: every body streams through the event loop.",
    )
    edr_ttl_seconds: int = Field(
        300, ge=10, le=3600, description="Lifetime of the data plane access tokens handed out in EDRs."
    )
    s3_endpoint: str | None = Field(
        None,
        description="S3 endpoint URL of this connector's object store (e.g. http://127.0.0.1:8333). Unset: no S3.",
    )
    s3_access_key: str | None = Field(None, description="S3 access key id.")
    s3_secret_key: SecretStr | None = Field(None, description="S3 secret access key.")
    s3_region: str = Field("us-east-1", description="S3 region name sent in signatures.")
    push_part_bytes: int = Field(
        16 * 1024 * 1024,
        ge=5 * 1024 * 1024,
        description="Part size of multipart uploads when pushing to S3 (the object is streamed, never buffered whole).",
    )
    inbox_dir: Path | None = Field(
        None,
        description="Consumer: where HttpData-PUSH deliveries to this connector are written. Default: data_dir/inbox.",
    )

    # --- processes ----------------------------------------------------------------------------
    catalog_page_size: int = Field(50, ge=1, le=1000, description="Default datasets per catalog page.")
    dsp_fast_lane: bool = Field(
        True,
        description="Serve the DSP negotiation POST endpoints, and the management API's start of a "
        "negotiation, in a lean ASGI layer in front of the framework (same handlers and errors, less "
        "CPU per message); `dadam serve` runs that layer inside uvicorn's HTTP protocol. See decisions "
        "0405, 0409 and 0412.",
    )
    dsp_sender: Literal["direct", "httpx"] = Field(
        "direct",
        description="How DSP messages are sent: `direct` (http.client keep-alive connections, "
        "falling back to httpx for proxies) or `httpx` (always httpx). See decision 0404.",
    )
    send_retry_limit: int = Field(
        7, ge=0, description="Send attempts to a peer before a process is TERMINATED."
    )
    send_retry_base_ms: int = Field(500, ge=1, description="Base delay of the exponential retry backoff.")
    state_timeout_seconds: int = Field(
        3600,
        ge=1,
        description="A negotiation or transfer waiting longer than this in one state is TERMINATED.",
    )
    worker_poll_ms: int = Field(
        200,
        ge=10,
        description="How soon workers look again for due work after finding some; while they find "
        "nothing, the wait doubles up to 5 times this (1 s by default). Work this process adds "
        "wakes them at once; other replicas' work is found within that longest wait.",
    )
    worker_batch_size: int = Field(20, ge=1, description="Rows a worker claims per iteration.")
    bank_reservation_minor_units: int = Field(
        0,
        ge=0,
        description="Funds reserved from the consumer's prepaid account when a paid transfer starts (0: off).",
    )
    bank_checkpoint_seconds: int = Field(
        60, ge=1, description="How often the data bank signs a Merkle checkpoint of new audit entries."
    )
    bank_checkpoint_entries: int = Field(
        1000,
        ge=0,
        description="Also sign a checkpoint as soon as this many audit entries are unsigned (0: by time only).",
    )
    bank_period_seconds: int = Field(
        86400,
        ge=60,
        description="Length of a data bank accounting period; a closed period takes late usage only as adjustments.",
    )
    bank_period_grace_seconds: int = Field(
        3600,
        ge=0,
        description="A data bank period closes automatically this long after it ended; until then late usage still counts as its own.",
    )
    bank_receipt_events: int = Field(
        0,
        ge=0,
        description="Provider: issue a usage receipt as soon as an agreement has this many unbilled events (0: per period).",
    )
    negotiation_counter_offers: Literal["auto", "manual"] = Field(
        "auto",
        description="Consumer: accept a provider counter-offer automatically when it grants at least what was "
        "asked and adds nothing, or leave it for the operator.",
    )
    negotiation_initial_offers: Literal["manual", "auto"] = Field(
        "manual",
        description="Consumer: provider-initiated offers wait for the operator, or are accepted at once if they "
        "grant unconditional use with no duty.",
    )
    negotiation_manual_approval: bool = Field(
        False,
        description="Provider: queue permitted negotiations for approval in the management API instead of agreeing.",
    )
    lease_seconds: int = Field(
        30, ge=1, description="A claimed row is released after this if its worker died."
    )

    @field_validator("dsp_path", "management_path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v.rstrip("/")

    @field_validator("public_url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an absolute http(s) URL, got {v!r}")
        return v.rstrip("/")

    @field_validator("trusted_dids", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        if isinstance(v, str):
            if v.lstrip().startswith("["):
                return json.loads(v)
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        if self.participant_id is None:
            self.participant_id = did_web_for_url(self.public_url)
        if (
            self.dataplane_signaling_secret is not None
            and len(self.dataplane_signaling_secret.get_secret_value()) < 32
        ):
            raise ValueError("dataplane_signaling_secret: at least 32 characters")
        if self.dataplane_signaling_url:
            if self.dataplane_signaling_secret is None:
                raise ValueError("dataplane_signaling_url needs dataplane_signaling_secret")
            if self.dataplane_embedded:
                raise ValueError(
                    "dataplane_signaling_url needs dataplane_embedded=false (the data plane runs apart)"
                )
        return self

    # --- derived ------------------------------------------------------------------------------
    @property
    def did(self) -> str:
        """This connector's DID (participant id)."""
        assert self.participant_id is not None
        return self.participant_id

    @property
    def dataplane_url(self) -> str:
        """Base URL of the data plane's public endpoints (``/api/public/...``)."""
        return (self.dataplane_public_url or self.public_url).rstrip("/")

    @property
    def signaling_callback_url(self) -> str:
        """Where the data plane calls the control plane back (signaling mode)."""
        return (self.dataplane_callback_url or self.public_url + "/api/signaling").rstrip("/")

    @property
    def dsp_base_url(self) -> str:
        """Absolute base URL of our DSP endpoints (DataService endpointURL, callbackAddress)."""
        return self.public_url + self.dsp_path

    def effective_database_url(self) -> str:
        """The database URL in force (the SQLite default under data_dir when none is set)."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'dadam.db').as_posix()}"


def _type_name(ann: object) -> str:
    text = str(ann) if not isinstance(ann, type) else ann.__name__
    text = text.replace("typing.", "").replace("pydantic.types.", "").replace("pathlib.", "")
    return text.replace(" | None", " (optional)").replace("|", "or")


def settings_markdown() -> str:
    """A Markdown table of every setting: variable, type, default, description."""
    rows = ["| variable | type | default | description |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        typ = _type_name(field.annotation)
        default = field.get_default(call_default_factory=True)
        shown = "(unset)" if default is None else f"`{default}`"
        if isinstance(default, list) and not default:
            shown = "(empty)"
        rows.append(f"| `DADAM_{name.upper()}` | {typ} | {shown} | {field.description or ''} |")
    return "\n".join(rows) + "\n"
