-- Two sources as one stream: web and app events, a UNION ALL in a view, counted per
-- channel in 5-minute windows. Each source has its own watermark; the query's is the
-- minimum of the two (Spark's default multipleWatermarkPolicy), so a window closes only
-- when neither source can still send rows for it. Each micro-batch reads the next file
-- of each source; once app has no more files, its watermark (and so the query's) stays.
--   streamsql run queries/union_of_two_sources.sql --db app.db --trigger available_now
--   duckdb app.db "SELECT * FROM events_per_channel ORDER BY window_start, channel"

CREATE SOURCE web (
    user_id    BIGINT,
    event_type VARCHAR,
    timestamp  BIGINT,
    event_time AS to_timestamp(timestamp / 1000),
    WATERMARK FOR event_time AS event_time - INTERVAL '10 minutes'
) WITH (connector = 'files', path = 'queries/data/events', format = 'json', max_files_per_trigger = 1);

CREATE SOURCE app (
    user_id    BIGINT,
    event_type VARCHAR,
    timestamp  BIGINT,
    event_time AS to_timestamp(timestamp / 1000),
    WATERMARK FOR event_time AS event_time - INTERVAL '5 minutes'
) WITH (connector = 'files', path = 'queries/data/app_events', format = 'json', max_files_per_trigger = 1);

CREATE VIEW all_events AS
SELECT 'web' AS channel, user_id, event_type, event_time FROM web
UNION ALL
SELECT 'app' AS channel, user_id, event_type, event_time FROM app;

CREATE SINK events_per_channel WITH (connector = 'duckdb') AS
SELECT window_start, window_end, channel, count(*) AS events, count(DISTINCT user_id) AS users
FROM all_events
WINDOW TUMBLING (event_time, INTERVAL '5 minutes')
GROUP BY window_start, window_end, channel
EMIT FINAL;
