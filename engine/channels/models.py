"""A channel file: which appointment events a channel takes, and how its SIU is written.

Plain models, checked when `engine.config.outbound` loads the channel directory; routing reads
them. One channel per file: `<dir>/*.yaml` (name defaults to the file stem).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

_DELIMITERS = set("|^~&")


def _components(value: Any) -> tuple[str, ...]:
    """A code-map value: a YAML list of components (or one plain scalar), never ER7 text."""
    if isinstance(value, (list, tuple)):
        out: list[str] = []
        for item in value:
            if isinstance(item, (list, tuple, dict)):
                raise ValueError("a component must be a scalar (text or number)")
            out.append("" if item is None else str(item))
        if not out:
            raise ValueError("a code-map value needs at least one component")
        return tuple(out)
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        text = str(value)
        if _DELIMITERS & set(text):
            # Why: an ER7 string would bypass per-component escaping; insist on a list.
            raise ValueError("write components as a YAML list, e.g. [FAMMED, EXAM1], not ER7 text")
        return (text,)
    raise ValueError("expected a YAML list of components")


def _str_list(value: Any) -> tuple[str, ...]:
    """Match lists accept numbers (Cal.com ids) and compare them as text."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        value = [value]
    return tuple(str(v) for v in value)


def _str_keys(value: Any) -> Any:
    """YAML reads `4211:` as an int key; code maps are looked up by text."""
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    return value


Components = Annotated[tuple[str, ...], BeforeValidator(_components)]
StrList = Annotated[tuple[str, ...], BeforeValidator(_str_list)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(_Model):
    """Which events a channel takes. Every listed rule must match; an empty rule matches all."""

    locations: StrList = Field(
        (),
        description="location keys: kind (in_person, telehealth, phone, other) "
        "or the Cal.com location value",
    )
    specialties: StrList = Field((), description="specialty names from maps.event_types/maps.teams")
    event_types: StrList = Field((), description="Cal.com event type ids or slugs")
    teams: StrList = Field((), description="Cal.com team ids or names")
    organizers: StrList = Field((), description="Cal.com user ids, usernames or emails")


class Filters(_Model):
    pending: Literal["tentative", "wait"] = Field(
        "wait",
        description="PENDING bookings: send S12 with SCH-25 Pending, or wait for confirmation",
    )
    no_shows: bool = Field(True, description="send S26 for no-shows")


class Msh(_Model):
    sending_application: str = "CALCOM_HL7"  # MSH-3
    sending_facility: str = ""  # MSH-4
    receiving_application: str = ""  # MSH-5
    receiving_facility: str = ""  # MSH-6
    processing_id: Literal["P", "T", "D"] = "P"  # MSH-11


class Hl7Options(_Model):
    version: Literal["2.5.1", "2.3"] = "2.5.1"
    template: str | None = Field(
        None, description="template file relative to the channel directory; default per version"
    )
    unencodable: Literal["escape", "transliterate", "dead_letter"] = Field(
        "escape", description="characters the destination charset cannot encode"
    )
    msh: Msh = Field(default_factory=Msh)
    reschedule_as: Literal["S13", "S14", "S15+S12"] = "S13"
    fill_sch2: bool = Field(True, description="repeat the appointment id in SCH-2 (filler id)")
    times_with_offset: bool = Field(
        True, description="append +-ZZZZ to appointment times (MSH-7 always has it)"
    )
    mrn_authority: str = Field("MRN", description="PID-3.4 for the MRN (type MR)")
    patient_id_authority: str = Field(
        "CALHL7", description="PID-3.4 for our stable patient id (type PI)"
    )
    notes: StrList = Field(
        (), description="booking questions copied into NTE segments, by field name"
    )


class Resource(_Model):
    id: Components  # AIG-3
    type: Components = ("",)  # AIG-4


class EventTypeMap(_Model):
    visit_type: Components  # AIS-3 (required) and default SCH-7
    reason: Components | None = None  # SCH-7 when it differs from the visit type
    specialty: str | None = None
    resources: tuple[Resource, ...] = ()  # rooms/equipment -> AIG


class TeamMap(_Model):
    specialty: str | None = None


class PatientFields(_Model):
    """Booking questions (by field name) that fill PID; unset = what normalization found."""

    dob: str | None = None  # PID-7, answer as YYYY-MM-DD
    sex: str | None = None  # PID-8 through sex_codes
    phone: str | None = None  # PID-13


_DEFAULT_SEX_CODES = {"f": "F", "female": "F", "woman": "F", "m": "M", "male": "M", "man": "M",
                      "o": "O", "other": "O", "u": "U", "unknown": "U", "x": "O"}


class Maps(_Model):
    providers: Annotated[dict[str, Components], BeforeValidator(_str_keys)] = Field(
        default_factory=dict,
        description="Cal.com user id/username/email -> XCN (AIP-3, PV1-7, SCH-16)")
    locations: Annotated[dict[str, Components], BeforeValidator(_str_keys)] = Field(
        default_factory=dict, description="location key -> PL (AIL-3, PV1-3)")
    event_types: Annotated[dict[str, EventTypeMap], BeforeValidator(_str_keys)] = Field(
        default_factory=dict, description="event type id or slug -> visit type (AIS-3, SCH-7)")
    teams: Annotated[dict[str, TeamMap], BeforeValidator(_str_keys)] = Field(default_factory=dict)
    patient_fields: PatientFields = Field(default_factory=PatientFields)
    sex_codes: dict[str, str] = Field(default_factory=lambda: dict(_DEFAULT_SEX_CODES))


class Unmapped(_Model):
    provider: Literal["error", "raw"] = "error"
    location: Literal["error", "raw"] = "error"
    event_type: Literal["error", "raw"] = "raw"


class Channel(_Model):
    """Which events go to which destination, and how they are written."""

    name: str = Field(min_length=1)
    destination: str = Field(min_length=1)
    enabled: bool = True
    match: Match = Field(default_factory=Match)
    filters: Filters = Field(default_factory=Filters)
    hl7: Hl7Options = Field(default_factory=Hl7Options)
    maps: Maps = Field(default_factory=Maps)
    unmapped: Unmapped = Field(default_factory=Unmapped)
