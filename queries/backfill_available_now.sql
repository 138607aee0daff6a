-- Backfill with trigger 'available_now': process every file present when the query starts,
-- in as many micro-batches as max_files_per_trigger allows, then stop. Windows the watermark
-- has not closed stay in the checkpoint for the next run: run it again after new files
-- arrive and it carries on where it stopped.
--   streamsql run queries/backfill_available_now.sql --db app.db

CREATE SOURCE events (
    user_id    BIGINT,
    event_type VARCHAR,
    timestamp  BIGINT,
    event_time AS to_timestamp(timestamp / 1000)
) WITH (
    connector = 'files',
    path = 'queries/data/events',
    format = 'json',
    max_files_per_trigger = 2
);

-- The watermark is given in the query this time (Databricks' form).
CREATE SINK hourly_users WITH (connector = 'duckdb', trigger = 'available_now') AS
SELECT window_start, window_end, count(*) AS events, count(DISTINCT user_id) AS users
FROM events WATERMARK event_time DELAY OF INTERVAL '10 minutes'
WINDOW HOPPING (event_time, INTERVAL '1 hour', INTERVAL '15 minutes')
GROUP BY window_start, window_end
EMIT FINAL;
