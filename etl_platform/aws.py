"""The one place boto3 clients are made, so every caller honours the profile's endpoints."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from etl_platform.config import Settings

_ENDPOINT_ATTR = {
    "kinesis": "kinesis_endpoint",
    "s3": "s3_endpoint",
    "cloudwatch": "cloudwatch_endpoint",
    "sns": "sns_endpoint",
    "dynamodb": "dynamodb_endpoint",
    "kms": "s3_endpoint",  # the local moto server serves KMS too
}


def client(service: str, settings: Settings, **config: Any) -> Any:
    """A boto3 client for `service`; local emulators get their loopback endpoint and dummy keys."""
    endpoint = getattr(settings, _ENDPOINT_ATTR[service], None) if service in _ENDPOINT_ATTR else None
    retries = config.pop("retries", {"max_attempts": 5, "mode": "standard"})
    boto_config = Config(retries=retries, **config)
    if service == "s3" and endpoint:
        boto_config = boto_config.merge(Config(s3={"addressing_style": "path"}))
    return boto3.client(
        service,
        region_name=settings.aws_region,
        endpoint_url=endpoint,
        config=boto_config,
        **dict(settings.local_credentials),
    )
