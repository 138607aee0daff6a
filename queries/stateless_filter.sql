-- A stateless filter and projection: every purchase, once, in the batch it arrives in
-- (Spark's append output mode for queries without aggregation).
--   streamsql run queries/stateless_filter.sql --trigger available_now

CREATE SOURCE events (
    user_id    BIGINT,
    event_type VARCHAR,
    timestamp  BIGINT,
    event_time AS to_timestamp(timestamp / 1000)
) WITH (
    connector = 'files',
    path = 'queries/data/events',
    format = 'json'
);

SELECT event_time, user_id
FROM events
WHERE event_type = 'purchase';
