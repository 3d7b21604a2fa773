"""What an ACK means for a message, and how long to wait before the next try.

Pure: `classify` turns a parsed ACK (or its absence) into an outcome; `backoff_seconds` gives
capped exponential back-off with jitter. The delivery worker does the I/O.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Outcome(StrEnum):
    DELIVERED = "delivered"  # the EHR has it: commit, advance the lane
    RETRY = "retry"  # a passing condition: same bytes, same MSH-10, later
    DEAD = "dead"  # the same bytes would fail again: dead letter, analyst acts
    RESET = "reset"  # reply we cannot credit (wrong MSA-2, garbage, no MSA): drop the
    # connection so a late ACK can never be credited to the next message, then retry


class RetryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    initial_seconds: float = Field(1.0, gt=0, description="first back-off")
    max_seconds: float = Field(300.0, gt=0, description="back-off cap")
    multiplier: float = Field(2.0, ge=1.0)
    jitter: float = Field(0.2, ge=0, le=1, description="+/- fraction of randomness")
    max_attempts: int = Field(20, ge=1, description="per-message budget, then dead letter")


class AckPolicy(BaseModel):
    """Defaults follow the standard's meaning for original-mode acknowledgements."""

    model_config = ConfigDict(extra="forbid")
    duplicate_key_is_delivered: bool = Field(
        True, description="AE with ERR-3 205 on a resend means the EHR already has it"
    )
    # Per-code overrides: keys like "AE", "AR", "CE", "CR", "AE:206", "AR:207";
    # values are outcomes (delivered, retry, dead).
    overrides: dict[str, Outcome] = Field(default_factory=dict)
    on_dead_letter: str = Field(
        "hold", pattern="^(hold|skip)$", description="hold the lane or skip to the next message"
    )
