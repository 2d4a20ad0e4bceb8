-- The day's previous rows go all at once (no DELETE, no dead tuples, no vacuum debt).
DROP TABLE IF EXISTS {partition}
