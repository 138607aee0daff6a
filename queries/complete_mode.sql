-- The whole result after every micro-batch (Spark's complete output mode):
-- the top event types so far, recomputed from state each batch.
--   streamsql run queries/complete_mode.sql --trigger available_now

CREATE SOURCE events (
    user_id    BIGINT,
    event_type VARCHAR,
    timestamp  BIGINT
) WITH (
    connector = 'files',
    path = 'queries/data/events',
    format = 'json',
    max_files_per_trigger = 2
);

CREATE SINK event_type_totals WITH (connector = 'console') AS
SELECT event_type, count(*) AS n, count(DISTINCT user_id) AS users
FROM events
GROUP BY event_type
EMIT SNAPSHOT
ORDER BY n DESC;
