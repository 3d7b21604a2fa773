"""`X-Cal-Signature-256`: lowercase hex HMAC-SHA256 of the raw request body.

Cal.com signs the exact bytes it sends (compact `JSON.stringify`), so verification runs on the
raw body before any parsing. Without a configured secret Cal.com sends the literal
`no-secret-provided`; we never accept it, whatever secrets are configured.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

NO_SECRET_PROVIDED = "no-secret-provided"
MAX_SECRETS = 2  # current + outgoing; enforced where secrets are configured, not per request


def sign(body: bytes, secret: str) -> str:
    """The header value Cal.com would send for `body` (tests and load tools)."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, secrets: Sequence[str]) -> bool:
    """True when `header` is the signature of `body` under one of `secrets`.

    Every configured secret is tried (rotation: new and old, `MAX_SECRETS`, is checked by the
    configuration loader; raising here would answer 500 and lose the webhook). Empty secrets are
    skipped so a blank configuration value can never make an empty-key HMAC valid.
    """
    if not header:
        return False
    candidate = header.strip().lower()
    if candidate == NO_SECRET_PROVIDED or len(candidate) != 64:
        return False
    try:
        # compare_digest on str refuses non-ASCII; bytes keep the comparison constant-time.
        given = candidate.encode("ascii")
    except UnicodeEncodeError:
        return False
    ok = False
    for secret in secrets:
        if not secret:
            continue
        # No early return: every configured secret costs the same, whichever matches.
        ok |= hmac.compare_digest(sign(body, secret).encode("ascii"), given)
    return ok
