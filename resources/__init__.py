"""The one place that maps a deployment profile (local | aws) to concrete Dagster resources."""

from __future__ import annotations

from typing import Any

from dagster import EnvVar
from dagster_aws.s3 import S3Resource

from etl_platform.config import Settings, load_settings
from resources.dbt import dbt_resource
from resources.platform import KinesisResource, LakeResource, OpenSearchResource, WarehouseResource

__all__ = ["build_resources", "KinesisResource", "LakeResource", "OpenSearchResource", "WarehouseResource"]


def build_resources(settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or load_settings()
    creds = dict(settings.local_credentials)
    s3 = S3Resource(
        region_name=settings.aws_region, endpoint_url=settings.s3_endpoint, use_ssl=settings.tls, **creds
    )
    if settings.profile == "aws":
        warehouse = WarehouseResource(
            dialect="redshift", dsn=settings.warehouse_dsn, password=EnvVar("ETL_REDSHIFT_PASSWORD"),
            iam_role=settings.redshift_iam_role,
        )
        opensearch = OpenSearchResource(
            url=settings.opensearch_url, username=EnvVar("ETL_OPENSEARCH_USERNAME"),
            password=EnvVar("ETL_OPENSEARCH_PASSWORD"), verify_certs=True,
        )
    else:
        warehouse = WarehouseResource(dialect="postgres", dsn=settings.warehouse_dsn)
        opensearch = OpenSearchResource(url=settings.opensearch_url, verify_certs=False)
    return {
        "kinesis": KinesisResource(
            stream_name=settings.stream_name, region_name=settings.aws_region,
            endpoint_url=settings.kinesis_endpoint, **creds,
        ),
        "s3": s3,
        "lake": LakeResource(bucket=settings.lake_bucket, s3=s3),
        "warehouse": warehouse,
        "opensearch": opensearch,
        "dbt": dbt_resource(),
    }
