"""MSH-10 control ids: 20 characters, sortable by time, unique without coordination.

48 bits of Unix milliseconds + 52 random bits, written in Crockford base32 (whose alphabet is
in ASCII order, so string order is time order). Random bits make ids from different processes
and restarts collide with negligible probability; within one process the id is also strictly
increasing (same millisecond -> previous random part + 1), so a lane's ids sort as sent.
"""

from __future__ import annotations

import secrets
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 52
_lock = threading.Lock()
_last = 0  # last (ms << 52 | random) issued by this process


def _encode(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_control_id() -> str:
    """A new MSH-10 value, e.g. `01KB2V8G7Q3M9Z4X5N6P` (exactly 20 characters)."""
    global _last
    ms = time.time_ns() // 1_000_000
    value = (ms << _RANDOM_BITS) | secrets.randbits(_RANDOM_BITS)
    with _lock:
        if value <= _last:  # same ms (or the clock stepped back): keep strictly increasing
            value = _last + 1
        _last = value
    return _encode(value, 20)  # 100 bits = 20 base32 characters
