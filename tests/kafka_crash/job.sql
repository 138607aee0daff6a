-- The Kafka kill test's job (tests/test_kafka_acceptance.py, tests/kafka_crash/harness.py).
-- $bootstrap and $topic are filled in per test; it runs from its own directory as
--   streamsql run job.sql --db app.db --trigger available_now
-- 400 offsets per trigger make some 50 batches per sink of the test's 20k messages. The
-- sinks start one after the other and read the topic each through its own client, both
-- recording the malformed messages in _streamsql.dead_letters.

CREATE SOURCE events (
    user_id    BIGINT,
    event_type VARCHAR,
    timestamp  BIGINT,
    event_time AS to_timestamp(timestamp / 1000),
    WATERMARK FOR event_time AS event_time - INTERVAL '10 minutes'
) WITH (connector = 'kafka', bootstrap_servers = '$bootstrap', topic = '$topic',
        starting_offsets = 'earliest', format = 'json', max_offsets_per_trigger = 400);

CREATE SINK windows WITH (connector = 'duckdb') AS
SELECT window_start, window_end, event_type, count(*) AS n
FROM events
WINDOW TUMBLING (event_time, INTERVAL '5 minutes')
GROUP BY window_start, window_end, event_type
EMIT FINAL;

CREATE SINK totals WITH (connector = 'duckdb') AS
SELECT event_type, count(*) AS n, sum(user_id) AS user_sum,
       min(timestamp) AS first_ms, max(timestamp) AS last_ms
FROM events
GROUP BY event_type
EMIT CHANGES;
