"""Create the stream and the lake bucket the platform writes to (idempotent; run by `stack up`)."""

from __future__ import annotations

import time
from typing import Any

DEFAULT_SHARDS = 2


def ensure_stream(kinesis: Any, stream_name: str, shards: int = DEFAULT_SHARDS, timeout_s: float = 30) -> None:
    """Create the stream if absent and wait until it is ACTIVE."""
    try:
        kinesis.create_stream(StreamName=stream_name, ShardCount=shards)
    except kinesis.exceptions.ResourceInUseException:
        pass
    deadline = time.monotonic() + timeout_s
    while True:
        status = kinesis.describe_stream_summary(StreamName=stream_name)["StreamDescriptionSummary"]["StreamStatus"]
        if status == "ACTIVE":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"stream {stream_name} still {status} after {timeout_s}s")
        time.sleep(0.1)


def ensure_bucket(s3: Any, bucket: str, region: str) -> None:
    """Create the lake bucket if absent, with public access blocked."""
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        s3.create_bucket(**kwargs)
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
