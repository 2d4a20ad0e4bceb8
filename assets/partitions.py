"""Partitioning shared by every lake, warehouse and search asset: one partition per event-time day."""

from dagster import DailyPartitionsDefinition

from etl_platform.events import EARLIEST_EVENT_TIME

# From the earliest event time decoding accepts (earlier events go to errors/, never to a day no
# partition covers); end_offset=1: today's partition exists while today's events stream in.
daily_partitions = DailyPartitionsDefinition(
    start_date=EARLIEST_EVENT_TIME.date().isoformat(), end_offset=1, timezone="UTC"
)
