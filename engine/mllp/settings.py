"""Connection and TLS settings for one MLLP peer: the MLLP client reads them, and a
destination's `connection:` in the channel files is validated against them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TlsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    ca_file: str | None = None  # verify the peer against this CA (system store if None)
    cert_file: str | None = None  # client certificate, when the EHR asks for one
    key_file: str | None = None
    server_hostname: str | None = None  # SNI / name to verify, when it differs from host
    verify: bool = True


class ConnectionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_connections: int = Field(1, ge=1, le=64, description="many legacy interfaces allow one")
    connect_timeout_seconds: float = Field(5.0, gt=0)
    response_timeout_seconds: float = Field(10.0, gt=0, description="wait this long for an ACK")
    commit_window: int = Field(
        16, ge=1, le=1024,
        description="ACKs received ahead of their commit to the store. Sending does not wait"
                    " for each commit; after a crash at most commit_window + 1 messages per"
                    " connection are sent again, each under its original MSH-10. 1: only the"
                    " message just sent waits for its commit while the next goes out")
    keepalive: bool = True
    # TCP keepalive timing (Linux): find a dead peer/firewall-dropped idle connection in
    # idle + interval * count seconds instead of the kernel's 2 hours.
    keepalive_idle_seconds: int = Field(60, ge=1)
    keepalive_interval_seconds: int = Field(15, ge=1)
    keepalive_count: int = Field(4, ge=1)
    reconnect_initial_seconds: float = Field(0.5, gt=0)
    reconnect_max_seconds: float = Field(30.0, gt=0)
    max_frame_bytes: int = Field(1_048_576, ge=1024)
    tls: TlsSettings = Field(default_factory=TlsSettings)
