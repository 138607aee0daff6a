-- Load the example events into a Kafka topic, one message per event (JSON values keyed by
-- user), with the Kafka sink. Start a broker first, e.g. the test broker:
--   python -m streamsql.testing.broker --port 9092
--   streamsql run queries/kafka_load.sql --db load.db --trigger available_now
-- then read the topic back with queries/kafka_windows.sql.

CREATE SOURCE event_files (
    user_id    BIGINT,
    event_type VARCHAR,
    timestamp  BIGINT
) WITH (
    connector = 'files',
    path = 'queries/data/events',
    format = 'json'
);

CREATE SINK user_events WITH (
    connector = 'kafka',
    bootstrap_servers = 'localhost:9092',
    topic = 'user-events',
    format = 'json',
    key = 'user_id'
) AS
SELECT user_id, event_type, timestamp
FROM event_files;
