-- Rows a table holds for one day (partition-pruned).
SELECT count(*) FROM {target} WHERE event_date = %(day)s
