"""Render throughput: AppointmentEvent -> ER7 text (and wire bytes) on one core.

    .venv/bin/python load/bench_render.py [--seconds 1.0] [--channel family-medicine]

Prints renders/s for each of 5 runs and their median. The requirement is >= 10,000/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.appointments.model import (  # noqa: E402
    AppointmentEvent, EventKind, EventType, Location, LocationKind, Patient, Provider,
)
from engine.config.outbound import load_config  # noqa: E402
from engine.channels.routing import render_message  # noqa: E402
from engine.hl7.controlid import new_control_id  # noqa: E402


def sample_event(i: int = 0) -> AppointmentEvent:
    """The Cal.com sample booking (synthetic patient), with a few characters to escape.

    `i` varies the booking, the patient's email and the time, so caches see realistic misses.
    """
    start = datetime(2026, 3, 10, 18, 0, tzinfo=timezone.utc) + timedelta(minutes=15 * i)
    uid = f"abHAVhYH1N5x7DhE{i:06d}"
    return AppointmentEvent(
        kind=EventKind.NEW, appointment_id=uid, booking_uid=uid,
        trigger="BOOKING_CREATED", status="ACCEPTED", start=start, end=start + timedelta(minutes=45),
        timezone="America/New_York",
        patient=Patient(first_name="Ada", last_name="Testpatient", full_name="Ada Testpatient",
                        email=f"ada.testpatient+{i}@example.com", phone="+15555550123", dob=date(1984, 7, 12)),
        provider=Provider(calcom_user_id=4211, name="Dr. Grace Testdoctor", username="grace-testdoctor"),
        location=Location(kind=LocationKind.IN_PERSON, raw="Suite 210, 100 Example Medical Plaza"),
        event_type=EventType(id=731042, slug="new-patient-visit", title="New Patient Visit", length_minutes=45),
        answers={"dateOfBirth": "1984-07-12", "reasonForVisit": "Annual physical & back pain | follow-up"},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each run")
    parser.add_argument("--channel", default="family-medicine")
    parser.add_argument("--dir", default=str(Path(__file__).resolve().parents[1] / "channels"))
    args = parser.parse_args()
    config = load_config(args.dir)
    channel = config.channel(args.channel)
    events = [sample_event(i) for i in range(5000)]  # more patients than the id cache holds
    now = datetime.now(timezone.utc)
    msg = render_message(config, channel, events[0], trigger="S12", control_id=new_control_id(), now=now)
    assert msg.error is None and msg.er7.startswith("MSH|"), msg.error
    rates = []
    for run in range(5):
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + args.seconds
        while True:
            for event in events[(n % 5000):(n % 5000) + 500]:  # check the clock rarely
                render_message(config, channel, event, trigger="S12", control_id=new_control_id(), now=now)
            n += 500
            if time.perf_counter() >= deadline:
                break
        rate = n / (time.perf_counter() - t0)
        rates.append(rate)
        print(f"run {run + 1}: {rate:,.0f} renders/s")
    print(f"median: {statistics.median(rates):,.0f} renders/s (channel {channel.name}, HL7 {channel.hl7.version}, "
          f"{len(msg.payload)} bytes, control id included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
