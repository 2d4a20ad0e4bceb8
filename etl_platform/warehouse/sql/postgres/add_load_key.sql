-- Built once after the COPY (a sorted bulk build), not maintained row by row during it; ATTACH
-- adopts it as the day's part of the table's primary key.
ALTER TABLE {load} ADD CONSTRAINT {load_key} PRIMARY KEY (event_id, event_date)
