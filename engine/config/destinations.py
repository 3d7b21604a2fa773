"""A destination file: one EHR interface, where and how messages are delivered to it.

The retry and ACK policies are part of a destination's file; `engine.delivery.policy` applies
them to each send.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.hl7.escape import check_wire_charset, codec_name
from engine.mllp.settings import ConnectionSettings


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
        True, description="AE or AR with error 205 on a resend means the EHR already has it"
    )
    # Per-code overrides: keys like "AE", "AR", "CE", "CR", "AE:206", "AR:207";
    # values are outcomes (delivered, retry, dead).
    overrides: dict[str, Outcome] = Field(default_factory=dict)
    on_dead_letter: str = Field(
        "hold", pattern="^(hold|skip)$", description="hold the lane or skip to the next message"
    )


class Destination(BaseModel):
    """One EHR interface: where and how messages are delivered."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    connection: ConnectionSettings = Field(default_factory=ConnectionSettings)
    ack: AckPolicy = Field(default_factory=AckPolicy)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    charset: str = Field("UTF-8", description='wire encoding, e.g. "UTF-8", "ASCII", "ISO-8859-1"')
    lane_key: Literal["appointment", "patient", "destination"] = Field(
        "appointment", description="ordering unit: one lane per appointment, per patient, or one"
    )

    @field_validator("charset")
    @classmethod
    def _known_charset(cls, value: str) -> str:
        return check_wire_charset(value)

    @property
    def codec(self) -> str:
        return codec_name(self.charset)
