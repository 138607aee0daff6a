-- The crash test's job (tests/test_crash.py): one files source and, for every sink kind
-- (callback, csv, delta, duckdb, json, parquet), an EMIT CHANGES per-key sink and an EMIT FINAL
-- tumbling-window sink. Paths are relative: run it from a directory holding `data/`
-- (tests/crash/harness.py writes it), with tests/crash on PYTHONPATH for the callbacks:
--   streamsql run job.sql --db app.db --trigger available_now
-- The sinks are in name order, the order in which a restarted run resumes them, so every
-- run starts them in the same order: each kind has one sink among the first started and
-- one among the last. File sinks compact every 3 batches, so kills land in compactions
-- too; the EMIT FINAL ones keep replaced files for the default minute, the EMIT CHANGES
-- ones delete them at once and cut compacted files at 8KB. The callbacks
-- (crash_callbacks.py) write out/<sink>/<batch_id>.parquet, idempotent by batch id. The
-- Delta sinks OPTIMIZE every 3 batches too.

CREATE SOURCE events (
    k      VARCHAR,
    ts     TIMESTAMP,
    amount BIGINT,
    WATERMARK FOR ts AS ts - INTERVAL '10 minutes'
) WITH (connector = 'files', path = 'data', format = 'json', max_files_per_trigger = 1);

CREATE SINK changes_callback
WITH (connector = 'callback', callback = 'crash_callbacks:changes_callback') AS
SELECT k, count(*) AS n, sum(amount) AS total, min(amount) AS min_amount,
       max(amount) AS max_amount, min(ts) AS first_ts, max(ts) AS last_ts
FROM events GROUP BY k EMIT CHANGES;

CREATE SINK changes_csv
WITH (connector = 'csv', path = 'out/changes_csv', compact_every = 3,
      target_file_size = '8KB', retention = '0 seconds') AS
SELECT k, count(*) AS n, sum(amount) AS total, min(amount) AS min_amount,
       max(amount) AS max_amount, min(ts) AS first_ts, max(ts) AS last_ts
FROM events GROUP BY k EMIT CHANGES;

CREATE SINK changes_delta
WITH (connector = 'delta', path = 'out/changes_delta', compact_every = 3) AS
SELECT k, count(*) AS n, sum(amount) AS total, min(amount) AS min_amount,
       max(amount) AS max_amount, min(ts) AS first_ts, max(ts) AS last_ts
FROM events GROUP BY k EMIT CHANGES;

CREATE SINK changes_duckdb WITH (connector = 'duckdb') AS
SELECT k, count(*) AS n, sum(amount) AS total, min(amount) AS min_amount,
       max(amount) AS max_amount, min(ts) AS first_ts, max(ts) AS last_ts
FROM events GROUP BY k EMIT CHANGES;

CREATE SINK changes_json
WITH (connector = 'json', path = 'out/changes_json', compact_every = 3,
      target_file_size = '8KB', retention = '0 seconds') AS
SELECT k, count(*) AS n, sum(amount) AS total, min(amount) AS min_amount,
       max(amount) AS max_amount, min(ts) AS first_ts, max(ts) AS last_ts
FROM events GROUP BY k EMIT CHANGES;

CREATE SINK changes_parquet
WITH (connector = 'parquet', path = 'out/changes_parquet', compact_every = 3,
      target_file_size = '8KB', retention = '0 seconds') AS
SELECT k, count(*) AS n, sum(amount) AS total, min(amount) AS min_amount,
       max(amount) AS max_amount, min(ts) AS first_ts, max(ts) AS last_ts
FROM events GROUP BY k EMIT CHANGES;

CREATE SINK final_callback
WITH (connector = 'callback', callback = 'crash_callbacks:final_callback') AS
SELECT window_start, window_end, k, count(*) AS n, sum(amount) AS total
FROM events WINDOW TUMBLING (ts, INTERVAL '5 minutes')
GROUP BY window_start, window_end, k EMIT FINAL;

CREATE SINK final_csv WITH (connector = 'csv', path = 'out/final_csv', compact_every = 3) AS
SELECT window_start, window_end, k, count(*) AS n, sum(amount) AS total
FROM events WINDOW TUMBLING (ts, INTERVAL '5 minutes')
GROUP BY window_start, window_end, k EMIT FINAL;

CREATE SINK final_delta
WITH (connector = 'delta', path = 'out/final_delta', compact_every = 3) AS
SELECT window_start, window_end, k, count(*) AS n, sum(amount) AS total
FROM events WINDOW TUMBLING (ts, INTERVAL '5 minutes')
GROUP BY window_start, window_end, k EMIT FINAL;

CREATE SINK final_duckdb WITH (connector = 'duckdb') AS
SELECT window_start, window_end, k, count(*) AS n, sum(amount) AS total
FROM events WINDOW TUMBLING (ts, INTERVAL '5 minutes')
GROUP BY window_start, window_end, k EMIT FINAL;

CREATE SINK final_json WITH (connector = 'json', path = 'out/final_json', compact_every = 3) AS
SELECT window_start, window_end, k, count(*) AS n, sum(amount) AS total
FROM events WINDOW TUMBLING (ts, INTERVAL '5 minutes')
GROUP BY window_start, window_end, k EMIT FINAL;

CREATE SINK final_parquet
WITH (connector = 'parquet', path = 'out/final_parquet', compact_every = 3) AS
SELECT window_start, window_end, k, count(*) AS n, sum(amount) AS total
FROM events WINDOW TUMBLING (ts, INTERVAL '5 minutes')
GROUP BY window_start, window_end, k EMIT FINAL;
