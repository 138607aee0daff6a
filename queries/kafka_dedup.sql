-- Deduplicate a Kafka topic delivered at least once: a producer that retries, or a loader
-- run twice (queries/kafka_load.sql), writes the same event again. Each event is kept
-- once, in the batch it first arrives in (Spark's dropDuplicates). The key includes the
-- event time, so the watermark forgets a key once its event time is at or below it, and
-- the state stays bounded; a copy that arrives after that is late and dropped (and
-- counted in the progress's late rows).
--   streamsql run queries/kafka_load.sql --db load.db --trigger available_now
--   streamsql run queries/kafka_dedup.sql --db app.db --trigger available_now
--   duckdb app.db "SELECT count(*), count(DISTINCT (user_id, event_type, timestamp)) FROM unique_events"

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

CREATE SINK unique_events WITH (connector = 'duckdb') AS
SELECT user_id, event_type, timestamp, event_time
FROM user_events
DEDUPLICATE ON (user_id, event_type, event_time)
EMIT FINAL;
