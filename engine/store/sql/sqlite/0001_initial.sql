-- Webhook bodies exactly as received; the unique hash makes a byte-identical redelivery a no-op.
CREATE TABLE received_events (
    id             INTEGER PRIMARY KEY,
    source         TEXT    NOT NULL,
    body_sha256    BLOB    NOT NULL,
    body           BLOB    NOT NULL,
    content_type   TEXT,
    trigger        TEXT,
    booking_uid    TEXT,
    received_at    REAL    NOT NULL,
    correlation_id TEXT    NOT NULL,
    state          TEXT    NOT NULL,
    reason         TEXT,
    processed_at   REAL,
    UNIQUE (source, body_sha256)
);
CREATE INDEX received_events_pending ON received_events (id) WHERE state = 'pending';
CREATE INDEX received_events_state ON received_events (state, id);

-- One row per appointment (a chain of Cal.com bookings linked by reschedules).
CREATE TABLE appointments (
    appointment_id TEXT PRIMARY KEY,
    state          TEXT NOT NULL,   -- JSON kept by engine.appointments
    updated_at     REAL NOT NULL
);
CREATE TABLE booking_uids (
    uid            TEXT PRIMARY KEY,
    appointment_id TEXT NOT NULL
);
CREATE INDEX booking_uids_appointment ON booking_uids (appointment_id);

-- Which destination was ever queued an S12 for an appointment (never send S13-S26 without).
CREATE TABLE destination_appointments (
    destination    TEXT NOT NULL,
    appointment_id TEXT NOT NULL,
    PRIMARY KEY (destination, appointment_id)
);
CREATE INDEX destination_appointments_appointment ON destination_appointments (appointment_id);

-- A lane is a FIFO per (destination, ordering key); only its head is ever in flight.
CREATE TABLE lanes (
    id          INTEGER PRIMARY KEY,
    destination TEXT    NOT NULL,
    lane_key    TEXT    NOT NULL,
    head_id     INTEGER,            -- NULL: the lane is empty
    held        INTEGER NOT NULL DEFAULT 0,   -- a dead letter at the head holds the lane
    ready_at    REAL    NOT NULL DEFAULT 0,   -- back-off: not before
    owner       TEXT,
    lease_until REAL,
    fence       INTEGER NOT NULL DEFAULT 0,   -- bumped at every claim
    UNIQUE (destination, lane_key)
);
CREATE INDEX lanes_ready ON lanes (destination, ready_at) WHERE head_id IS NOT NULL AND held = 0;
CREATE INDEX lanes_owner ON lanes (owner) WHERE owner IS NOT NULL;
CREATE INDEX lanes_held ON lanes (destination) WHERE held = 1;

CREATE TABLE outbound (
    id             INTEGER PRIMARY KEY,
    lane_id        INTEGER NOT NULL REFERENCES lanes (id),
    event_id       INTEGER,
    channel        TEXT    NOT NULL,
    destination    TEXT    NOT NULL,
    appointment_id TEXT    NOT NULL,
    message_type   TEXT    NOT NULL,
    control_id     TEXT    NOT NULL UNIQUE,
    payload        BLOB    NOT NULL,
    event_json     TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    hold_lane      INTEGER NOT NULL DEFAULT 1,
    attempts       INTEGER NOT NULL DEFAULT 0,
    claims         INTEGER NOT NULL DEFAULT 0,   -- >1: it may have reached the EHR before
    last_error     TEXT,
    ack_code       TEXT,
    created_at     REAL    NOT NULL,
    accepted_at    REAL,
    correlation_id TEXT,
    acked_at       REAL
);
CREATE INDEX outbound_lane ON outbound (lane_id, id);
CREATE INDEX outbound_status ON outbound (status, id) WHERE status IN ('queued', 'dead');
CREATE INDEX outbound_appointment ON outbound (appointment_id);

-- Every try and every reply, kept with its message.
CREATE TABLE attempts (
    id         INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL,
    at         REAL    NOT NULL,
    control_id TEXT    NOT NULL,
    outcome    TEXT    NOT NULL,
    ack_code   TEXT,
    ack        BLOB,
    detail     TEXT
);
CREATE INDEX attempts_message ON attempts (message_id, id);

CREATE TABLE audit (
    id             INTEGER PRIMARY KEY,
    at             REAL NOT NULL,
    kind           TEXT NOT NULL,
    appointment_id TEXT,
    actor          TEXT,
    trigger        TEXT,
    source         TEXT,
    detail         TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_appointment ON audit (appointment_id, id);
CREATE INDEX audit_at ON audit (at);

CREATE TABLE paused_channels (
    channel TEXT PRIMARY KEY,
    by      TEXT NOT NULL,
    at      REAL NOT NULL
);
