-- One warehouse table (events or anomalies), range-partitioned by day: a load builds the day's new
-- partition beside the old one and swaps it in, so replacing a day never leaves dead rows behind.
-- The key is (event_id, event_date): a day holds each event once.
CREATE TABLE IF NOT EXISTS {target} (
    {columns},
    PRIMARY KEY (event_id, event_date)
) PARTITION BY RANGE (event_date)
