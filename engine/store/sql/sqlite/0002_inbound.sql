-- Inbound SIU from the EHRs (engine/inbound) and reconciliation watermarks (engine/calcom).

-- Every SIU we answered AA, exactly as received; (sender, MSH-10) makes a resend a no-op.
CREATE TABLE inbound_messages (
    id                 INTEGER PRIMARY KEY,
    channel            TEXT    NOT NULL,
    sender             TEXT    NOT NULL,   -- MSH-3.1 "|" MSH-4.1
    control_id         TEXT    NOT NULL,   -- MSH-10
    trigger            TEXT    NOT NULL,   -- S12 ... S15
    ehr_appointment_id TEXT    NOT NULL,   -- SCH-2.1, else SCH-1.1
    payload            BLOB    NOT NULL,
    ack_code           TEXT    NOT NULL,
    received_at        REAL    NOT NULL,
    UNIQUE (sender, control_id)
);

-- Cal.com API work, one FIFO per (channel, EHR appointment); only its head is ever in flight.
CREATE TABLE inbound_jobs (
    id                 INTEGER PRIMARY KEY,
    message_id         INTEGER NOT NULL REFERENCES inbound_messages (id),
    channel            TEXT    NOT NULL,
    ehr_appointment_id TEXT    NOT NULL,
    trigger            TEXT    NOT NULL,
    params             TEXT    NOT NULL,   -- JSON: times, provider, location (no patient data)
    status             TEXT    NOT NULL,   -- queued | done | dead
    attempts           INTEGER NOT NULL DEFAULT 0,
    ready_at           REAL    NOT NULL DEFAULT 0,
    lease              INTEGER NOT NULL DEFAULT 0,   -- bumped at every claim (fence)
    lease_until        REAL,
    last_error         TEXT,               -- Cal.com's message for a dead letter
    result             TEXT,
    created_at         REAL    NOT NULL,
    done_at            REAL
);
CREATE INDEX inbound_jobs_queue ON inbound_jobs (channel, ehr_appointment_id, id) WHERE status = 'queued';
CREATE INDEX inbound_jobs_ready ON inbound_jobs (ready_at, id) WHERE status = 'queued';
CREATE INDEX inbound_jobs_dead ON inbound_jobs (id) WHERE status = 'dead';

-- What Cal.com holds for each EHR appointment (the current block).
CREATE TABLE inbound_blocks (
    channel            TEXT    NOT NULL,
    ehr_appointment_id TEXT    NOT NULL,
    current_uid        TEXT,
    status             TEXT    NOT NULL,   -- accepted | pending | cancelled | none
    start_at           TEXT,               -- ISO UTC
    end_at             TEXT,
    provider_id        TEXT,
    event_type_id      INTEGER,
    updated_at         REAL    NOT NULL,
    PRIMARY KEY (channel, ehr_appointment_id)
);

-- Every booking uid we created (and each uid of its reschedule chain): the no-echo key.
CREATE TABLE inbound_uids (
    uid                TEXT PRIMARY KEY,
    channel            TEXT NOT NULL,
    ehr_appointment_id TEXT NOT NULL,
    previous_uid       TEXT,
    status             TEXT NOT NULL,
    created_at         REAL NOT NULL
);

CREATE TABLE reconcile_watermarks (
    source     TEXT PRIMARY KEY,
    watermark  TEXT NOT NULL,   -- ISO-8601 UTC
    updated_at REAL NOT NULL
);
