-- Staging for one day: a future partition with the table's columns, filled by COPY (FREEZE: it is
-- created in this transaction) and checked row by row to lie inside the day, which also lets
-- ATTACH PARTITION skip its validation scan.
CREATE TABLE {load} (
    LIKE {target} INCLUDING DEFAULTS,
    CONSTRAINT {range_check} CHECK (event_date >= {day} AND event_date < {next_day})
)
