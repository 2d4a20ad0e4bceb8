-- Serialise loads of the same schema and day (a backfill racing the automation): held to commit.
SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 0))
