-- The seed query on Kafka: 5-minute tumbling windows of the `user-events` topic (written
-- by queries/kafka_load.sql) with a 10-minute watermark. Offsets are kept in the engine
-- database, so running it again reads only what arrived since; bad messages land in
-- _streamsql.dead_letters with their partition and offset.
--   streamsql run queries/kafka_windows.sql --db app.db --trigger available_now
--   streamsql status app.db          (committed offsets and lag per partition)
--   duckdb app.db "SELECT * FROM kafka_clicks_per_window ORDER BY window_start, event_type"

CREATE SOURCE user_events (
    user_id    BIGINT,
    event_type VARCHAR,
    timestamp  BIGINT,
    event_time AS to_timestamp(timestamp / 1000),
    WATERMARK FOR event_time AS event_time - INTERVAL '10 minutes'
) WITH (
    connector = 'kafka',
    bootstrap_servers = 'localhost:9092',
    topic = 'user-events',
    starting_offsets = 'earliest',
    format = 'json',
    max_offsets_per_trigger = 40
);

CREATE SINK kafka_clicks_per_window WITH (connector = 'duckdb') AS
SELECT window_start, window_end, event_type, count(*) AS n
FROM user_events
WINDOW TUMBLING (event_time, INTERVAL '5 minutes')
GROUP BY window_start, window_end, event_type
EMIT FINAL;
