"""ssl.SSLContext builders for MLLP over TLS (client side from TlsSettings, server side)."""

from __future__ import annotations

import ssl

from engine.mllp.settings import TlsSettings


def client_ssl_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """Context for connecting to an EHR, or None when TLS is off."""
    if not tls.enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not tls.verify:
        # an explicit, per-destination opt-out (self-signed test EHRs); never the default
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    return ctx


def server_ssl_context(
    cert_file: str,
    key_file: str | None = None,
    *,
    client_ca_file: str | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """Context for the listener; with client_ca_file, client certificates are verified
    (required when require_client_cert, else optional)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    if client_ca_file:
        ctx.load_verify_locations(cafile=client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx
