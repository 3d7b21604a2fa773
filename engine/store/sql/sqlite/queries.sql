-- The operator queries of the SQLite store, by name (engine/store/queries.py loads them).
-- Parameters are SQLite's positional `?` (or `?N` where one value is used twice).

-- name: queue_depths
-- per destination: queued, dead, and when the oldest queued message was accepted
SELECT destination, SUM(status = 'queued'), SUM(status = 'dead'),
       MIN(CASE WHEN status = 'queued' THEN COALESCE(accepted_at, created_at) END)
FROM outbound WHERE status IN ('queued', 'dead') GROUP BY destination;

-- name: held_lanes
SELECT destination, COUNT(*) FROM lanes WHERE held = 1 GROUP BY destination;

-- name: lanes
-- lanes with a head, held first; ?1 a destination or NULL for all, ?2 the limit
SELECT l.id, l.destination, l.lane_key, l.head_id, l.held, l.ready_at, l.owner,
       (SELECT COUNT(*) FROM outbound o WHERE o.lane_id = l.id AND o.status = 'queued')
FROM lanes l WHERE l.head_id IS NOT NULL AND (?1 IS NULL OR l.destination = ?1)
ORDER BY l.held DESC, l.ready_at LIMIT ?2;

-- name: dead_letters
SELECT o.id, o.lane_id, o.destination, o.channel, o.message_type, o.control_id,
       o.appointment_id, o.attempts, o.last_error, o.created_at
FROM outbound o WHERE o.status = 'dead' ORDER BY o.id LIMIT ?;

-- name: message
SELECT id, lane_id, destination, channel, appointment_id, message_type, control_id, payload,
       event_json, status, attempts, last_error, ack_code, created_at, accepted_at, acked_at,
       correlation_id
FROM outbound WHERE id = ?;

-- name: message_attempts
SELECT at, control_id, outcome, ack_code, ack, detail FROM attempts
WHERE message_id = ? ORDER BY id;

-- name: message_place
SELECT lane_id, destination, appointment_id FROM outbound WHERE id = ?;

-- name: appointment_messages_from
-- a message and the later ones of its appointment to its destination, and who holds each
SELECT o.id, o.message_type, o.control_id, o.status, o.acked_at,
       CASE WHEN l.head_id = o.id THEN l.owner END, l.lease_until
FROM outbound o JOIN lanes l ON l.id = o.lane_id
WHERE o.destination = ? AND o.appointment_id = ? AND o.id >= ? ORDER BY o.id;

-- name: sends_of
-- the attempts of the messages in a JSON array of ids
SELECT message_id, control_id, at, outcome, ack FROM attempts
WHERE message_id IN (SELECT value FROM json_each(?)) ORDER BY id;

-- name: lane_ready_now
UPDATE lanes SET ready_at = 0 WHERE id = ?;

-- name: requeue_message
UPDATE outbound SET status = 'queued', attempts = 0 WHERE id = ?;

-- name: replace_payload
UPDATE outbound SET control_id = ?, payload = ?, status = 'queued', attempts = 0,
       last_error = NULL
WHERE id = ?;

-- name: held_lane_head
SELECT l.head_id, o.status, o.appointment_id FROM lanes l
JOIN outbound o ON o.id = l.head_id WHERE l.id = ? AND l.held = 1;

-- name: skip_message
UPDATE outbound SET status = 'skipped' WHERE id = ?;

-- name: pause_channel
INSERT INTO paused_channels (channel, by, at) VALUES (?, ?, ?)
ON CONFLICT (channel) DO NOTHING;

-- name: resume_channel
DELETE FROM paused_channels WHERE channel = ?;

-- name: paused_channels
SELECT channel FROM paused_channels;

-- name: requeue_quarantined_event
UPDATE received_events SET state = 'pending', reason = NULL
WHERE id = ? AND state = 'quarantined';

-- name: audit
-- ?1 an appointment or NULL, ?2 a start (epoch seconds) or NULL, ?3 the limit
SELECT at, kind, appointment_id, actor, trigger, source, detail FROM audit
WHERE (?1 IS NULL OR appointment_id = ?1) AND (?2 IS NULL OR at >= ?2)
ORDER BY id LIMIT ?3;

-- name: quarantined_count
SELECT COUNT(*) FROM received_events WHERE state = 'quarantined';

-- name: event_counts
SELECT state, COUNT(*) FROM received_events GROUP BY state;

-- name: message_counts
SELECT status, COUNT(*) FROM outbound GROUP BY status;

-- name: inbound_jobs
-- ?1 a status or NULL for all, ?2 the limit
SELECT j.id, j.channel, j.ehr_appointment_id, j.trigger, j.status, j.attempts, j.last_error,
       j.result, j.created_at, j.done_at, m.control_id
FROM inbound_jobs j JOIN inbound_messages m ON m.id = j.message_id
WHERE (?1 IS NULL OR j.status = ?1) ORDER BY j.id LIMIT ?2;

-- name: retry_inbound_job
UPDATE inbound_jobs SET status = 'queued', ready_at = 0, lease_until = NULL, done_at = NULL
WHERE id = ? AND status = 'dead';

-- name: inbound_job_counts
SELECT status, COUNT(*) FROM inbound_jobs GROUP BY status;

-- name: inbound_message_count
SELECT COUNT(*) FROM inbound_messages;
