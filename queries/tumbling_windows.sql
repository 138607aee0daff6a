-- 5-minute tumbling windows with a 10-minute watermark (Spark's append output mode).
-- A window is written once, when the watermark (latest event time seen - 10 minutes)
-- passes its end; events more than 10 minutes late for their window are dropped.
-- The result is a table in the engine database:
--   streamsql run queries/tumbling_windows.sql --db app.db --trigger available_now
--   duckdb app.db "SELECT * FROM clicks_per_window ORDER BY window_start, event_type"

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

CREATE SINK clicks_per_window WITH (connector = 'duckdb') AS
SELECT window_start, window_end, event_type, count(*) AS n
FROM events
WINDOW TUMBLING (event_time, INTERVAL '5 minutes')
GROUP BY window_start, window_end, event_type
EMIT FINAL;
