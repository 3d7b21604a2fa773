-- The operator queries of the PostgreSQL store, by name (engine/store/queries.py loads them).
-- Text parameters are passed through pg_text (no NUL) by the caller.

-- name: queue_depths
-- per destination: queued, dead, and when the oldest queued message was accepted
SELECT destination, COUNT(*) FILTER (WHERE status = 'queued') AS queued,
       COUNT(*) FILTER (WHERE status = 'dead') AS dead,
       MIN(COALESCE(accepted_at, created_at)) FILTER (WHERE status = 'queued') AS oldest
FROM outbound WHERE status IN ('queued', 'dead')
GROUP BY destination ORDER BY destination;

-- name: held_lanes
SELECT destination, COUNT(*) FROM lanes WHERE held GROUP BY destination;

-- name: lanes
-- lanes with a head, held first, of every destination
SELECT l.id AS lane, l.destination, l.lane_key, l.head_id AS head, l.held::int AS held,
       l.ready_at, l.owner,
       (SELECT COUNT(*) FROM outbound o WHERE o.lane_id = l.id AND o.status = 'queued') AS queued
FROM lanes l WHERE l.head_id IS NOT NULL
ORDER BY l.held DESC, l.ready_at LIMIT $1;

-- name: lanes_of_destination
SELECT l.id AS lane, l.destination, l.lane_key, l.head_id AS head, l.held::int AS held,
       l.ready_at, l.owner,
       (SELECT COUNT(*) FROM outbound o WHERE o.lane_id = l.id AND o.status = 'queued') AS queued
FROM lanes l WHERE l.head_id IS NOT NULL AND l.destination = $2
ORDER BY l.held DESC, l.ready_at LIMIT $1;

-- name: dead_letters
SELECT id, lane_id AS lane, destination, channel, message_type, control_id, appointment_id,
       attempts, last_error AS error, created_at
FROM outbound WHERE status = 'dead' ORDER BY id LIMIT $1;

-- name: message
SELECT id, lane_id AS lane, destination, channel, appointment_id, message_type, control_id,
       payload, event_json, status, attempts, last_error AS error, ack_code, created_at,
       accepted_at, acked_at, correlation_id
FROM outbound WHERE id = $1;

-- name: message_attempts
SELECT at, control_id, outcome, ack_code, ack, detail FROM attempts
WHERE message_id = $1 ORDER BY id;

-- name: message_place
SELECT lane_id, destination, appointment_id FROM outbound WHERE id = $1;

-- name: lock_appointment_lanes_from
-- the lanes of a message and of the later ones of its appointment, locked in id order
SELECT 1 FROM lanes WHERE id IN (SELECT lane_id FROM outbound
    WHERE destination = $1 AND appointment_id = $2 AND id >= $3) ORDER BY id FOR UPDATE;

-- name: appointment_messages_from
-- a message and the later ones of its appointment to its destination, and who holds each
SELECT o.id, o.message_type, o.control_id, o.status, o.acked_at,
       CASE WHEN l.head_id = o.id THEN l.owner END AS owner, l.lease_until
FROM outbound o JOIN lanes l ON l.id = o.lane_id
WHERE o.destination = $1 AND o.appointment_id = $2 AND o.id >= $3 ORDER BY o.id;

-- name: sends_of
SELECT message_id, control_id, at, outcome, ack FROM attempts
WHERE message_id = ANY($1::bigint[]) ORDER BY id;

-- name: lane_ready_now
UPDATE lanes SET ready_at = 0 WHERE id = $1;

-- name: requeue_message
UPDATE outbound SET status = 'queued', attempts = 0 WHERE id = $1;

-- name: replace_payload
UPDATE outbound SET control_id = $2, payload = $3, status = 'queued', attempts = 0,
       last_error = NULL
WHERE id = $1;

-- name: held_lane_head
SELECT l.head_id, o.appointment_id FROM lanes l
JOIN outbound o ON o.id = l.head_id WHERE l.id = $1 AND l.held;

-- name: skip_message
UPDATE outbound SET status = 'skipped' WHERE id = $1;

-- name: pause_channel
INSERT INTO paused_channels (channel, paused_by, paused_at) VALUES ($1, $2, $3)
ON CONFLICT (channel) DO NOTHING;

-- name: resume_channel
DELETE FROM paused_channels WHERE channel = $1;

-- name: paused_channels
SELECT channel FROM paused_channels;

-- name: requeue_quarantined_event
UPDATE received_events SET state = 'pending', reason = NULL
WHERE id = $1 AND state = 'quarantined';

-- name: audit
-- $2 an appointment or NULL, $3 a start (epoch seconds) or NULL
SELECT at, kind, appointment_id, actor, trigger, source, detail::text AS detail FROM audit
WHERE ($2::text IS NULL OR appointment_id = $2) AND ($3::float8 IS NULL OR at >= $3)
ORDER BY id LIMIT $1;

-- name: quarantined_count
SELECT COUNT(*) FROM received_events WHERE state = 'quarantined';

-- name: event_counts
SELECT state, COUNT(*) FROM received_events GROUP BY state;

-- name: message_counts
SELECT status, COUNT(*) FROM outbound GROUP BY status;

-- name: inbound_jobs
SELECT j.id, j.channel, j.ehr_appointment_id, j.trigger, j.status, j.attempts, j.last_error,
       j.result, j.created_at, j.done_at, m.control_id
FROM inbound_jobs j JOIN inbound_messages m ON m.id = j.message_id
WHERE ($1::text IS NULL OR j.status = $1) ORDER BY j.id LIMIT $2;

-- name: retry_inbound_job
UPDATE inbound_jobs SET status = 'queued', ready_at = 0, lease_until = NULL, done_at = NULL
WHERE id = $1 AND status = 'dead';

-- name: inbound_job_counts
SELECT status, COUNT(*) FROM inbound_jobs GROUP BY status;

-- name: inbound_message_count
SELECT COUNT(*) FROM inbound_messages;
