"""Inbound channels: which EHR may send us SIU, and how each message becomes Cal.com API calls.

One file per EHR interface in `<channels dir>/inbound/*.yaml` (name defaults to the file stem),
loaded with the same `${VAR:-default}` interpolation and all-problems-at-once reporting as the
outbound channel files (`engine.config.files`). The outbound loader reads only the top level
of the channel directory, so these files never get mistaken for outbound channels; the
directory fingerprint already covers them, so hot reload sees their changes.

    name: ehr-main-inbound
    sending_application: MAIN_EHR        # MSH-3.1 (required)
    sending_facility: ACME_CLINIC        # MSH-4.1 ("" = any facility)
    message_types: [S12, S13, S14, S15]
    echo_destinations: [ehr-main]        # outbound destinations that ARE this EHR: no echo
    timezone: America/New_York           # for HL7 times without an offset
    providers:                           # AIP-3.1 / SCH-16.1 -> Cal.com user + block event type
      "1234567893": {calcom_user_id: 4211, event_type_id: 990001}
    locations:                           # AIL-3.1 -> Cal.com location object (optional)
      FAMMED: {type: address}
    triggers: {S12: create, S13: move, S14: move_if_times_changed, S15: cancel}
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from engine.config.files import ConfigError, Problem, line_for, read_yaml, validate, yaml_files
from engine.hl7.escape import check_wire_charset

Trigger = Literal["S12", "S13", "S14", "S15"]
Action = Literal["create", "move", "move_if_times_changed", "cancel", "ignore"]
TRIGGERS: tuple[Trigger, ...] = ("S12", "S13", "S14", "S15")
DEFAULT_OWN_APPLICATIONS = frozenset({"CALCOM_HL7"})


def _str_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderMap(_Model):
    """One EHR provider: whose Cal.com calendar a block goes on, and with which event type."""

    calcom_user_id: int | None = Field(None, description="for the record and checks")
    event_type_id: int = Field(ge=1, description="the provider's dedicated 'EHR block' event type")
    owner_email: str | None = Field(
        None, description="the event type owner's email: sent as rescheduledBy so a reschedule "
                          "of a confirmation-required type is confirmed at once")
    send_length: bool = Field(
        False, description="send lengthInMinutes (only for event types with several durations)")


class Placeholder(_Model):
    """The attendee of every block. Never the patient: Cal.com e-mails its attendees."""

    email_domain: str = Field("ehr-blocks.invalid", min_length=3)
    name: str = Field("EHR booking", min_length=1)


_DEFAULT_ACTIONS: dict[Trigger, Action] = {
    "S12": "create", "S13": "move", "S14": "move_if_times_changed", "S15": "cancel"}


class InboundChannel(_Model):
    name: str = Field(min_length=1)
    enabled: bool = True
    sending_application: str = Field(min_length=1, description="MSH-3.1 of the EHR")
    sending_facility: str = Field("", description="MSH-4.1; empty accepts any")
    message_types: tuple[Trigger, ...] = TRIGGERS
    echo_destinations: tuple[str, ...] = Field(
        (), description="outbound destination names that are this EHR (no SIU echo to them)")
    timezone: str = Field("UTC", description="IANA zone for HL7 times without an offset")
    charset: str = Field("UTF-8", description="wire encoding of this sender")
    providers: Annotated[dict[str, ProviderMap], BeforeValidator(_str_keys)] = Field(
        default_factory=dict)
    locations: Annotated[dict[str, dict[str, Any]], BeforeValidator(_str_keys)] = Field(
        default_factory=dict, description="AIL-3.1 -> Cal.com `location` object for the block")
    placeholder: Placeholder = Field(default_factory=Placeholder)
    triggers: dict[Trigger, Action] = Field(default_factory=lambda: dict(_DEFAULT_ACTIONS))
    cancellation_reason: str = Field("Cancelled in the EHR", max_length=200)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("charset")
    @classmethod
    def _charset(cls, value: str) -> str:
        return check_wire_charset(value)

    @model_validator(mode="after")
    def _triggers_complete(self) -> InboundChannel:
        for t in self.message_types:
            if t not in self.triggers:
                raise ValueError(f"message type {t} has no entry in triggers")
        return self

    def action(self, trigger: str) -> str:
        # any MSH-9.2 may arrive: the Literal-keyed map has no entry for the others
        return self.triggers.get(trigger, "ignore")  # type: ignore[call-overload]

    def placeholder_email(self, ehr_appointment_id: str) -> str:
        """Stable per (channel, EHR appointment): lets a retry find a block it may have made."""
        digest = hashlib.sha256(f"{self.name}\0{ehr_appointment_id}".encode()).hexdigest()[:20]
        return f"ehr-block+{digest}@{self.placeholder.email_domain}"


@dataclass(frozen=True)
class InboundConfig:
    channels: Mapping[str, InboundChannel]
    own_applications: frozenset[str] = DEFAULT_OWN_APPLICATIONS
    # (MSH-3.1, MSH-4.1 or "") -> channel name
    _senders: Mapping[tuple[str, str], str] = field(default_factory=dict)

    def channel_for(self, application: str, facility: str) -> InboundChannel | None:
        name = self._senders.get((application, facility)) or self._senders.get((application, ""))
        ch = self.channels.get(name) if name else None
        return ch if ch is not None and ch.enabled else None

    def echo_destinations(self, channel: str) -> frozenset[str]:
        ch = self.channels.get(channel)
        return frozenset(ch.echo_destinations) if ch else frozenset()

    def echo_map(self) -> dict[str, frozenset[str]]:
        """Every channel's echo destinations (what a processing helper process is handed)."""
        return {name: frozenset(ch.echo_destinations) for name, ch in self.channels.items()}


def empty_config(own_applications: Iterable[str] = DEFAULT_OWN_APPLICATIONS) -> InboundConfig:
    return InboundConfig(MappingProxyType({}), frozenset(own_applications), MappingProxyType({}))


def build_config(channels: Iterable[InboundChannel],
                 own_applications: Iterable[str] = DEFAULT_OWN_APPLICATIONS) -> InboundConfig:
    """From already validated models (tests, and the loader below)."""
    by_name = {c.name: c for c in channels}
    senders = {(c.sending_application, c.sending_facility): c.name for c in by_name.values()}
    return InboundConfig(MappingProxyType(by_name), frozenset(own_applications),
                         MappingProxyType(senders))


def load_inbound_config(
    channels_dir: str | os.PathLike[str],
    own_applications: Iterable[str] = DEFAULT_OWN_APPLICATIONS,
) -> InboundConfig:
    """Load `<channels_dir>/inbound/*.yaml`; a missing folder means no inbound channels.
    Raises ConfigError listing every problem."""
    root = Path(channels_dir)
    folder = root / "inbound"
    if not folder.is_dir():
        return empty_config(own_applications)
    problems: list[Problem] = []
    channels: list[InboundChannel] = []
    where: dict[tuple[str, str], str] = {}
    names: dict[str, str] = {}
    for path in yaml_files(folder):
        shown = str(path.relative_to(root))
        data, lines = read_yaml(path, shown, problems)
        if data is None:
            continue
        data.setdefault("name", path.stem)
        ch = validate(InboundChannel, data, shown, lines, problems)
        if ch is None:
            continue
        if ch.name in names:
            problems.append(Problem(shown, "name", line_for(lines, ("name",)),
                                    f"inbound channel {ch.name!r} is also defined in "
                                    f"{names[ch.name]}"))
            continue
        key = (ch.sending_application, ch.sending_facility)
        if key in where:
            problems.append(Problem(shown, "sending_application",
                                    line_for(lines, ("sending_application",)),
                                    f"sender {key[0]}/{key[1] or '*'} is already taken by "
                                    f"{where[key]}"))
            continue
        if ch.sending_application in own_applications:
            problems.append(Problem(shown, "sending_application",
                                    line_for(lines, ("sending_application",)),
                                    "that is our own MSH-3: messages from it are echoes"))
            continue
        where[key] = shown
        names[ch.name] = shown
        channels.append(ch)
    if problems:
        raise ConfigError(problems)
    return build_config(channels, own_applications)


def own_applications_of(outbound_config: Any) -> frozenset[str]:
    """Our MSH-3 values, from the outbound channels (plus the default)."""
    apps = set(DEFAULT_OWN_APPLICATIONS)
    for ch in getattr(outbound_config, "channels", ()):
        apps.add(ch.hl7.msh.sending_application)
    return frozenset(apps)
