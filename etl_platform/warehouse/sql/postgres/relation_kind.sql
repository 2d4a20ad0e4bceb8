-- 'p' for a partitioned table, 'r' for a plain one, no row when it does not exist.
SELECT c.relkind::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = %(table)s
