"""Capped exponential back-off with jitter: reconnecting to an EHR (mllp.Backoff) and
retrying a message (delivery.policy.backoff_seconds) wait by the same rule."""

from __future__ import annotations

import math
import random
from collections.abc import Callable


def backoff_delay(attempt: int, initial: float, maximum: float, multiplier: float,
                  jitter: float, rand: Callable[[], float] = random.random) -> float:
    """Delay before attempt number `attempt` (1-based): initial * multiplier**(attempt-1),
    capped at `maximum`, then +/- `jitter` as a fraction (still <= maximum)."""
    n = max(1, attempt)
    if multiplier > 1.0 and initial < maximum:
        # compare exponents, not values: multiplier**n overflows a float for large n
        steps_to_cap = math.log(maximum / initial, multiplier)
        base = maximum if n - 1 >= steps_to_cap else initial * multiplier ** (n - 1)
    else:
        base = min(initial, maximum)
    delay = base * (1.0 + jitter * (2.0 * rand() - 1.0))
    return max(0.0, min(delay, maximum))
