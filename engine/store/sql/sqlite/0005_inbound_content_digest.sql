-- A repeated MSH-10 is a resend only when the content matches too: an EHR whose counter
-- wrapped or was reset reuses ids for new messages. `digest` is the content digest
-- (inbound_records.content_digest: the bytes with MSH-7 blanked); rows stored before it
-- existed have NULL and keep the old rule (any repeat of their MSH-10 is a resend).
-- SQLite cannot drop a table's UNIQUE clause: the table is rebuilt (foreign keys are off
-- during migrations and checked before the commit).
CREATE TABLE inbound_messages_new (
    id                 INTEGER PRIMARY KEY,
    channel            TEXT    NOT NULL,
    sender             TEXT    NOT NULL,   -- MSH-3.1 "|" MSH-4.1
    control_id         TEXT    NOT NULL,   -- MSH-10
    trigger            TEXT    NOT NULL,   -- S12 ... S15
    ehr_appointment_id TEXT    NOT NULL,   -- SCH-2.1, else SCH-1.1
    payload            BLOB    NOT NULL,
    ack_code           TEXT    NOT NULL,
    received_at        REAL    NOT NULL,
    digest             TEXT,               -- content digest, NULL when stored before this column
    UNIQUE (sender, control_id, digest)
);
INSERT INTO inbound_messages_new (id, channel, sender, control_id, trigger, ehr_appointment_id,
                                  payload, ack_code, received_at, digest)
SELECT id, channel, sender, control_id, trigger, ehr_appointment_id, payload, ack_code,
       received_at, NULL
  FROM inbound_messages;
DROP TABLE inbound_messages;
ALTER TABLE inbound_messages_new RENAME TO inbound_messages;
