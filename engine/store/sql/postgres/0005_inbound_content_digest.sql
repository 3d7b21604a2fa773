-- A repeated MSH-10 is a resend only when the content matches too: an EHR whose counter
-- wrapped or was reset reuses ids for new messages. `digest` is the content digest
-- (inbound_records.content_digest: the bytes with MSH-7 blanked); rows stored before it
-- existed have NULL and keep the old rule (any repeat of their MSH-10 is a resend).
ALTER TABLE inbound_messages ADD COLUMN digest TEXT;
ALTER TABLE inbound_messages DROP CONSTRAINT inbound_messages_sender_control_id_key;
ALTER TABLE inbound_messages ADD CONSTRAINT inbound_messages_sender_control_id_digest_key
    UNIQUE (sender, control_id, digest);
