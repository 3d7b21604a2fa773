"""MSH-10 control ids: 20 characters, sortable by time, unique without coordination.

48 bits of Unix milliseconds + 52 random bits, written in Crockford base32 (whose alphabet is
in ASCII order, so string order is time order). Random bits make ids from different processes
and restarts collide with negligible probability; within one process the id is also strictly
increasing (same millisecond -> previous random part + 1), so a lane's ids sort as sent.
"""

from __future__ import annotations

import base64
import random
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 52
_lock = threading.Lock()
_last = 0  # last (ms << 52 | random) issued by this process


# base64's RFC 4648 base32 digits, in value order, mapped to Crockford's (also in value order).
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode("ascii"))


def _encode(value: int) -> str:
    """100 bits -> 20 Crockford characters (C-speed: b32encode + translate, no Python loop)."""
    raw = base64.b32encode((value << 4).to_bytes(13, "big"))  # 104 bits: the top 100 are value
    return raw[:20].translate(_TO_CROCKFORD).decode("ascii")


def new_control_id() -> str:
    """A new MSH-10 value, e.g. `01KB2V8G7Q3M9Z4X5N6P` (exactly 20 characters)."""
    global _last
    ms = time.time_ns() // 1_000_000
    # random (Mersenne Twister) is seeded from os.urandom and reseeded in forked children;
    # we need uniqueness, not secrecy, and secrets.randbits costs a syscall per id.
    value = (ms << _RANDOM_BITS) | random.getrandbits(_RANDOM_BITS)
    with _lock:
        if value <= _last:  # same ms (or the clock stepped back): keep strictly increasing
            value = _last + 1
        _last = value
    return _encode(value)
