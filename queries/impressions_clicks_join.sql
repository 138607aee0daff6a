-- Ad impressions joined with their clicks (a stream-stream interval join, LEFT OUTER):
-- a click counts for an impression of the same ad within the hour after it. Each
-- impression is printed with its click in the batch the click arrives, or, never clicked,
-- with a NULL click once the watermark passes its hour (plus the clicks' lateness): the
-- impressions a2 and a3 come out with NULLs in the third batch, when the watermark
-- (11:20) proves no click for them can come any more.
--   streamsql run queries/impressions_clicks_join.sql --trigger available_now

CREATE SOURCE impressions (
    ad_id    VARCHAR,
    imp_time TIMESTAMP,
    WATERMARK FOR imp_time AS imp_time - INTERVAL '10 minutes'
) WITH (
    connector = 'files',
    path = 'queries/data/impressions',
    format = 'json',
    max_files_per_trigger = 1
);

CREATE SOURCE clicks (
    ad_id      VARCHAR,
    click_time TIMESTAMP,
    WATERMARK FOR click_time AS click_time - INTERVAL '10 minutes'
) WITH (
    connector = 'files',
    path = 'queries/data/clicks',
    format = 'json',
    max_files_per_trigger = 1
);

SELECT i.ad_id, i.imp_time, c.click_time
FROM impressions AS i
LEFT OUTER JOIN clicks AS c
  ON i.ad_id = c.ad_id
 AND c.click_time BETWEEN i.imp_time AND i.imp_time + INTERVAL '1 hour';
