-- Chained windows (Spark 3.5's multiple stateful operators, in append mode): events counted
-- per user in 5-minute windows, then those per-user windows counted per quarter-hour: how
-- many users were active, in how many 5-minute slots, and the busiest slot of one user.
-- The inner window passes its rows on with window_time (its end - 1 microsecond), which
-- carries the watermark: a quarter-hour closes once the watermark passes its end, when every
-- 5-minute window in it has closed and been counted. Both windows' state is in the checkpoint.
--   streamsql run queries/chained_windows.sql --db app.db --trigger available_now
--   duckdb app.db "SELECT * FROM quarter_hour_activity ORDER BY window_start"

CREATE SOURCE events (
    user_id    BIGINT,
    event_type VARCHAR,
    timestamp  BIGINT,
    event_time AS to_timestamp(timestamp / 1000),
    WATERMARK FOR event_time AS event_time - INTERVAL '10 minutes'
) WITH (
    connector = 'files',
    path = 'queries/data/events',
    format = 'json',
    max_files_per_trigger = 1
);

CREATE VIEW user_activity AS
SELECT window_time, user_id, count(*) AS events
FROM events
WINDOW TUMBLING (event_time, INTERVAL '5 minutes')
GROUP BY window_start, window_end, user_id;

CREATE SINK quarter_hour_activity WITH (connector = 'duckdb') AS
SELECT window_start, window_end, count(DISTINCT user_id) AS users,
       count(*) AS active_slots, max(events) AS busiest_slot, sum(events) AS events
FROM user_activity
WINDOW TUMBLING (window_time, INTERVAL '15 minutes')
GROUP BY window_start, window_end
EMIT FINAL;
