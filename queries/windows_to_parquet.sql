-- The tutorial's production query: 5-minute tumbling windows with a 10-minute watermark,
-- written to Parquet files every 30 seconds, with a checkpoint. The checkpoint is the
-- engine database given with --db: run the file again after a crash (or after Ctrl-C) and
-- the sink resumes from its last committed batch, with no window lost or written twice.
-- Each batch's windows are published atomically as out/clicks_per_window/part-*.parquet;
-- small files are compacted every 10 batches; the view clicks_per_window reads exactly the
-- committed files:
--   streamsql run queries/windows_to_parquet.sql --db app.db
--   streamsql status app.db        (from another terminal: batches, offsets, lag, watermark)
--   duckdb -c "SELECT * FROM read_parquet('out/clicks_per_window/*.parquet')"

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

CREATE SINK clicks_per_window
WITH (connector = 'parquet', path = 'out/clicks_per_window', trigger = '30 seconds')
AS
SELECT window_start, window_end, event_type, count(*) AS n
FROM events
WINDOW TUMBLING (event_time, INTERVAL '5 minutes')
GROUP BY window_start, window_end, event_type
EMIT FINAL;
