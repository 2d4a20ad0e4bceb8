"""Partitioning shared by every lake, warehouse and search asset: one partition per event-time day."""

from dagster import DailyPartitionsDefinition

# end_offset=1: today's partition exists while today's events stream in.
daily_partitions = DailyPartitionsDefinition(start_date="2020-01-01", end_offset=1, timezone="UTC")
