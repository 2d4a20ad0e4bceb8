"""Dagster resources: thin wrappers that hand etl_platform the clients and names it needs."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource
from pydantic import Field


class KinesisResource(ConfigurableResource):
    """The event stream: its name and a boto3 Kinesis client for the profile's endpoint."""

    stream_name: str
    region_name: str
    endpoint_url: str | None = Field(default=None, description="None = the AWS endpoint for the region")
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None

    def client(self) -> Any:
        return boto3.client(
            "kinesis", region_name=self.region_name, endpoint_url=self.endpoint_url,
            aws_access_key_id=self.aws_access_key_id, aws_secret_access_key=self.aws_secret_access_key,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )


class LakeResource(ConfigurableResource):
    """The S3 data lake: bucket plus the dagster-aws S3 resource that reaches it."""

    bucket: str
    s3: S3Resource

    def client(self) -> Any:
        return self.s3.get_client()


class WarehouseResource(ConfigurableResource):
    """Redshift in production, PostgreSQL locally (two dialects behind one interface: etl_platform.warehouse)."""

    dialect: str = Field(description="postgres | redshift")
    dsn: str = Field(description="libpq URI (postgres) or redshift://user@host:port/db")
    password: str | None = Field(default=None, description="from an EnvVar; never committed")
    iam_role: str | None = Field(default=None, description="Redshift COPY role ARN")


class OpenSearchResource(ConfigurableResource):
    url: str
    username: str | None = None
    password: str | None = None
    verify_certs: bool = True

    def client(self) -> Any:
        from opensearchpy import OpenSearch

        auth = (self.username, self.password) if self.username else None
        return OpenSearch(
            hosts=[self.url], http_auth=auth, verify_certs=self.verify_certs and self.url.startswith("https"),
            timeout=30, max_retries=3, retry_on_timeout=True,
        )
