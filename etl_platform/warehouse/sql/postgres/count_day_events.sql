-- Rows and distinct events a table holds for one day (reconciliation checks).
SELECT count(*), count(DISTINCT event_id) FROM {target} WHERE event_date = %(day)s
