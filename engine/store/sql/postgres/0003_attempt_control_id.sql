-- An attempt is recorded under the MSH-10 that went out (p_control_id), not the message's
-- current one: an operator's reprocess can give the message a new MSH-10 while the old bytes
-- are on the wire. Same as calhl7_record_attempt in 0001 otherwise; the 10-argument version
-- becomes a call of this one, for nodes that still run the code before this migration (a
-- rolling upgrade).

CREATE FUNCTION calhl7_record_attempt(
    p_message BIGINT, p_lane BIGINT, p_fence BIGINT, p_outcome TEXT, p_at DOUBLE PRECISION,
    p_ack BYTEA, p_ack_code TEXT, p_detail TEXT, p_next_attempt_at DOUBLE PRECISION,
    p_hold BOOLEAN, p_control_id TEXT
) RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
    cur RECORD;
BEGIN
    SELECT l.fence, l.head_id, o.control_id, o.appointment_id, o.destination, o.channel,
           o.message_type
      INTO cur
      FROM lanes l JOIN outbound o ON o.id = p_message
     WHERE l.id = p_lane
       FOR UPDATE OF l;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    INSERT INTO attempts (message_id, at, control_id, outcome, ack_code, ack, detail)
    VALUES (p_message, p_at, COALESCE(p_control_id, cur.control_id), p_outcome, p_ack_code,
            p_ack, p_detail);
    IF cur.fence <> p_fence OR cur.head_id IS DISTINCT FROM p_message THEN
        RETURN;  -- our claim was taken over (lease lapsed): the new owner decides
    END IF;
    IF p_outcome = 'delivered' THEN
        UPDATE outbound SET status = 'acked', attempts = attempts + 1, ack_code = p_ack_code,
                            acked_at = p_at, last_error = NULL
         WHERE id = p_message;
        PERFORM calhl7_advance_lanes(ARRAY[p_lane], ARRAY[p_message], p_at);
    ELSIF p_outcome = 'retry' THEN
        UPDATE outbound SET attempts = attempts + 1, ack_code = p_ack_code, last_error = p_detail
         WHERE id = p_message;
        UPDATE lanes SET ready_at = COALESCE(p_next_attempt_at, p_at), owner = NULL,
                         lease_until = NULL
         WHERE id = p_lane;
    ELSE
        UPDATE outbound SET status = CASE WHEN p_hold THEN 'dead' ELSE 'skipped' END,
                            attempts = attempts + 1, ack_code = p_ack_code,
                            last_error = p_detail, hold_lane = p_hold
         WHERE id = p_message;
        IF p_hold THEN
            UPDATE lanes SET held = TRUE, owner = NULL, lease_until = NULL WHERE id = p_lane;
        ELSE
            PERFORM calhl7_advance_lanes(ARRAY[p_lane], ARRAY[p_message], p_at);
        END IF;
    END IF;
    IF p_outcome <> 'retry' THEN
        INSERT INTO audit (at, kind, appointment_id, actor, trigger, source, detail)
        VALUES (p_at, 'sent', cur.appointment_id, 'engine', cur.message_type, cur.destination,
                jsonb_build_object('message', p_message,
                                   'control_id', COALESCE(p_control_id, cur.control_id),
                                   'channel', cur.channel, 'outcome', p_outcome,
                                   'ack_code', p_ack_code));
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION calhl7_record_attempt(
    p_message BIGINT, p_lane BIGINT, p_fence BIGINT, p_outcome TEXT, p_at DOUBLE PRECISION,
    p_ack BYTEA, p_ack_code TEXT, p_detail TEXT, p_next_attempt_at DOUBLE PRECISION,
    p_hold BOOLEAN
) RETURNS VOID LANGUAGE sql AS $$
    SELECT calhl7_record_attempt(p_message, p_lane, p_fence, p_outcome, p_at, p_ack,
                                 p_ack_code, p_detail, p_next_attempt_at, p_hold, NULL::text);
$$;
