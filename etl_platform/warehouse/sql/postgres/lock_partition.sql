-- Serialise the loads of one schema (see postgres.py, step 1): held to commit.
SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 0))
