"""The platform's production stack as an AWS CDK app (deploy/cdk/app.py; `make synth`).

Owns the infrastructure only; every platform value (pipelines and their streams, lake security and
lifecycle, alarms, IAM policy documents, the Dagster instance and workspace, the lease table's schema)
is read from the project's own config files and code, never repeated here. Modules by domain:

    settings    what the stack is built from: CDK context plus the project's config and code
    cfn         boto3 request shapes (put_metric_alarm, create_table) -> CloudFormation L1 properties
    network     VPC, subnets, endpoints, security groups, flow logs
    storage     the KMS key, the streams (Kinesis, MSK Serverless), the lake bucket, the lease table
    stores      the analytics stores: Redshift and OpenSearch, and their secrets
    iam         the platform's roles, built from security/iam/*.json
    dagster     Dagster on ECS Fargate: image repository, cluster, RDS storage, services, run tasks
    monitoring  log groups, the alert topic, the CloudWatch alarms
    stack       the stack that puts them together, and its outputs
"""

from etl_platform_cdk.settings import StackSettings
from etl_platform_cdk.stack import EtlPlatformStack

__all__ = ["EtlPlatformStack", "StackSettings"]
