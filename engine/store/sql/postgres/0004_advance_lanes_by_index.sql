-- calhl7_advance_lanes, lane by lane. The set-based version (0001) joined unnest(arrays):
-- its plan depends on the arrays, so PostgreSQL planned it again at every call (about
-- 0.5 ms, more than running it), and the generic plan it could have kept scans every lane.
-- Each statement below takes one lane id, so its cached plan is index lookups; called once
-- per delivered message, it took a tenth of the time (0.95 -> 0.09 ms a call in one bench_pg
-- run, pg_stat_statements).
-- Same arguments and effect: nodes still running the code before this migration call it as
-- before.
CREATE OR REPLACE FUNCTION calhl7_advance_lanes(
    p_lanes BIGINT[], p_after BIGINT[], p_now DOUBLE PRECISION
) RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
    v_head BIGINT;
    v_status TEXT;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(p_lanes), 0) LOOP
        -- the next message that can go, or a dead letter that holds the lane
        SELECT o.id, o.status INTO v_head, v_status
          FROM outbound o
         WHERE o.lane_id = p_lanes[i] AND o.id > p_after[i]
           AND (o.status = 'queued' OR (o.status = 'dead' AND o.hold_lane))
         ORDER BY o.id LIMIT 1;
        -- dead letters before it that do not hold the lane are passed over
        UPDATE outbound SET status = 'skipped'
         WHERE lane_id = p_lanes[i] AND id > p_after[i] AND status = 'dead' AND NOT hold_lane
           AND (v_head IS NULL OR id < v_head);
        UPDATE lanes
           SET head_id = v_head,
               held = coalesce(v_status = 'dead', FALSE),
               ready_at = CASE WHEN v_status = 'queued' THEN p_now ELSE ready_at END,
               owner = NULL, lease_until = NULL
         WHERE id = p_lanes[i];
    END LOOP;
END;
$$;
