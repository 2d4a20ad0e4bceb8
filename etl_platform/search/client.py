"""An opensearch-py client for the profile's cluster, for code outside Dagster (CLI, benchmark).

Dagster code gets its client from `resources.OpenSearchResource`; this mirrors it: basic auth from
ETL_OPENSEARCH_USERNAME / ETL_OPENSEARCH_PASSWORD when set, certificates verified on https.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from etl_platform.config import Settings


def make_client(
    settings: Settings, env: Mapping[str, str] | None = None, url: str | None = None, timeout: float = 30.0
) -> Any:
    from opensearchpy import OpenSearch

    env = os.environ if env is None else env
    url = url or settings.opensearch_url
    user, password = env.get("ETL_OPENSEARCH_USERNAME"), env.get("ETL_OPENSEARCH_PASSWORD")
    return OpenSearch(
        hosts=[url],
        http_auth=(user, password) if user else None,
        verify_certs=url.startswith("https"),
        timeout=timeout,
        max_retries=3,
        retry_on_timeout=True,
    )
