-- Enrichment: every event joined with a dimension table of users kept in Parquet, then
-- counted per country in 5-minute windows. A stream-static join: each micro-batch's
-- events meet the table as it stands when the batch runs (the view reads the Parquet
-- files again each batch, so a file replaced between batches is seen by later ones).
-- LEFT JOIN keeps the events of users the table does not know (country NULL).
--   streamsql run queries/enrichment_join.sql --db app.db --trigger available_now
--   duckdb app.db "SELECT * FROM clicks_per_country ORDER BY window_start, country"

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

CREATE VIEW users AS SELECT * FROM read_parquet('queries/data/users/*.parquet');

CREATE SINK clicks_per_country WITH (connector = 'duckdb') AS
SELECT window_start, window_end, u.country, count(*) AS clicks, count(DISTINCT e.user_id) AS users
FROM events AS e LEFT JOIN users AS u ON e.user_id = u.user_id
WHERE e.event_type = 'click'
WINDOW TUMBLING (event_time, INTERVAL '5 minutes')
GROUP BY window_start, window_end, u.country
EMIT FINAL;
