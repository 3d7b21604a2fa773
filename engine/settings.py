"""The engine's settings, built in one place from the command line and the environment.

Every `CALHL7_*` variable the engine reads is read here: the verbs take their defaults from
`env()`, `serve` turns its arguments into one `Settings`, and the operator verbs name who acts
with `operator_name()`. (`${VAR}` inside channel files is configuration, read by the loader.)
"""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, overload

from pydantic import BaseModel, ConfigDict, Field

from engine.mllp.framing import VtInFrame

PREFIX = "CALHL7_"


@overload
def env(name: str, default: str, environ: Mapping[str, str] | None = None) -> str: ...


@overload
def env(name: str, default: None = None, environ: Mapping[str, str] | None = None
        ) -> str | None: ...


def env(name: str, default: str | None = None,
        environ: Mapping[str, str] | None = None) -> str | None:
    """`CALHL7_<name>`, or `default` when it is not set."""
    return (os.environ if environ is None else environ).get(f"{PREFIX}{name}", default)


def host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def host_port_or_none(value: str | None) -> tuple[str, int] | None:
    return host_port(value) if value else None


def operator_name(environ: Mapping[str, str] | None = None) -> str:
    """Who an operator action is recorded as: CALHL7_OPERATOR, else the login name."""
    return env("OPERATOR", None, environ) or getpass.getuser()


def store_location(store: str | None, data: str,
                   environ: Mapping[str, str] | None = None) -> str:
    """The store an operator verb opens: --store, else CALHL7_STORE, else the --data folder."""
    return store or env("STORE", None, environ) or data


def secrets_from_env(environ: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """CALHL7_WEBHOOK_SECRET for /webhooks/calcom; CALHL7_WEBHOOK_SECRET_<SOURCE> for
    /webhooks/calcom/<source>. A comma separates two secrets while one is being rotated."""
    out: dict[str, list[str]] = {}
    for key, value in (os.environ if environ is None else environ).items():
        if key == "CALHL7_WEBHOOK_SECRET":
            source = "default"
        elif key.startswith("CALHL7_WEBHOOK_SECRET_"):
            source = key.removeprefix("CALHL7_WEBHOOK_SECRET_").lower().replace("_", "-")
        else:
            continue
        secrets = [s.strip() for s in value.split(",") if s.strip()]
        if secrets:
            out[source] = secrets
    return out


def _node_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


class Settings(BaseModel):
    """What one engine node runs with."""

    model_config = ConfigDict(extra="forbid")

    http_host: str = "127.0.0.1"
    http_port: int = 8080
    data_dir: Path = Path("var")
    channels_dir: Path = Path("channels")
    store_url: str | None = None  # postgresql://... ; None: SQLite in data_dir
    secrets: dict[str, list[str]] = Field(default_factory=dict)
    max_body_bytes: int = 1_048_576
    # HTTP edges: a request's headers, then its body, must arrive within these; connections
    # over the cap are answered 503 at once (each connection is a file descriptor)
    http_header_timeout_seconds: float = 10.0
    http_body_timeout_seconds: float = 15.0
    http_max_connections: int = 500
    insecure_unsigned: bool = False
    metrics_host: str | None = None  # a separate address for /metrics and health
    metrics_port: int | None = None
    node_id: str = Field(default_factory=_node_id)
    reload_interval_seconds: float = 1.0
    # the pure core (normalize, route, render) in a helper process; 0 runs it in the engine
    processing_processes: int = 1
    # the inbound MLLP listener (EHR -> Cal.com); None: no listener
    mllp_host: str = "127.0.0.1"
    mllp_port: int | None = None
    mllp_tls_cert: str | None = None
    mllp_tls_key: str | None = None
    mllp_tls_client_ca: str | None = None  # set: EHRs must present a certificate it signed
    mllp_max_frame_bytes: int = 1_048_576
    mllp_idle_timeout_seconds: float = 300.0
    mllp_processing_ids: tuple[str, ...] = ("P",)  # MSH-11 values taken; others get AR 202
    mllp_vt_in_frame: VtInFrame = "data"  # a 0x0B inside a frame is data (or: "restart")
    mllp_max_connections: int = 100  # more are closed at once (and counted)
    mllp_ack_write_timeout_seconds: float = 30.0  # an EHR not reading its ACKs is cut off
    reconcile_interval_seconds: float = 300.0  # 0: off; needs a Cal.com API key
    heartbeat_seconds: float = 5.0
    # Cal.com API v2 (inbound writes, reconciliation); no key: neither runs
    calcom_api_key: str | None = None
    calcom_api_url: str | None = None
    calcom_rate_per_minute: float | None = None

    def store_location(self) -> str:
        return self.store_url or str(self.data_dir)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **given: Any) -> Settings:
        """Settings from the environment (secrets, Cal.com API); `given` takes precedence."""
        rate = env("CALCOM_RATE_PER_MINUTE", None, environ)
        values: dict[str, Any] = {
            "secrets": secrets_from_env(environ),
            "calcom_api_key": env("CALCOM_API_KEY", None, environ) or None,
            "calcom_api_url": env("CALCOM_API_URL", None, environ) or None,
            "calcom_rate_per_minute": float(rate) if rate else None,
        }
        values.update(given)
        return cls(**values)

    @classmethod
    def from_serve_args(cls, args: argparse.Namespace,
                        environ: Mapping[str, str] | None = None) -> Settings:
        """`calhl7 serve`'s arguments (whose defaults already come from the environment)."""
        given: dict[str, Any] = {
            "http_host": args.http[0], "http_port": args.http[1],
            "data_dir": Path(args.data), "channels_dir": Path(args.channels),
            "store_url": args.store, "max_body_bytes": args.max_body_bytes,
            "http_max_connections": args.http_max_connections,
            "insecure_unsigned": args.insecure_dev,
            "metrics_host": args.metrics[0] if args.metrics else None,
            "metrics_port": args.metrics[1] if args.metrics else None,
            "processing_processes": args.processing_processes,
            "reconcile_interval_seconds": args.reconcile_interval,
        }
        if args.node_id:
            given["node_id"] = args.node_id
        if args.mllp:
            given.update(
                mllp_host=args.mllp[0], mllp_port=args.mllp[1],
                mllp_tls_cert=args.mllp_tls_cert, mllp_tls_key=args.mllp_tls_key,
                mllp_tls_client_ca=args.mllp_tls_client_ca,
                mllp_max_frame_bytes=args.mllp_max_frame_bytes,
                mllp_vt_in_frame=args.mllp_vt_in_frame,
                mllp_max_connections=args.mllp_max_connections,
                mllp_processing_ids=tuple(
                    v.strip().upper() for v in args.mllp_processing_ids.split(",") if v.strip()),
            )
        return cls.from_env(environ, **given)
