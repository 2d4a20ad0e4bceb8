-- The staged day becomes the table's partition for that day, under its canonical names.
ALTER TABLE {load} RENAME TO {partition_name};
ALTER INDEX {load_key_qualified} RENAME TO {partition_key};
ALTER TABLE {target} ATTACH PARTITION {partition} FOR VALUES FROM ({day}) TO ({next_day})
