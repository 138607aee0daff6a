-- Running counts per event type (Spark's update output mode).
-- Every micro-batch prints the new total of each event type that received events in it;
-- types without new events are not repeated.
--   streamsql run queries/running_counts.sql --trigger available_now

CREATE SOURCE events (
    user_id    BIGINT,
    event_type VARCHAR,
    timestamp  BIGINT,                                  -- epoch milliseconds
    event_time AS to_timestamp(timestamp / 1000)        -- computed column
) WITH (
    connector = 'files',
    path = 'queries/data/events',
    format = 'json',
    max_files_per_trigger = 1                           -- one file per micro-batch
);

CREATE SINK running_counts WITH (connector = 'console') AS
SELECT event_type, count(*) AS n
FROM events
GROUP BY event_type
EMIT CHANGES;
