"""The one place this code location silences Dagster preview/beta warnings; imported first by assets/__init__.py.

- Partitioned asset checks (one result per day, like the asset they check: assets/lake_checks.py,
  assets/warehouse.py, assets/search.py, and the dbt tests of the partitioned models in assets/dbt.py)
  are a preview feature in Dagster 1.13. They are the only way to check the partition that was
  materialized rather than whichever ran last, so we use them deliberately (dagster is pinned and the
  checks are tested); the warning would otherwise be printed by every load, run and test.
- `SensorDefinition(owners=...)` is beta, and Dagster 1.13 passes `owners` itself when it copies a
  sensor to bind its job while resolving the Definitions; this code location sets no owners.

Only these two warnings are silenced: any other preview or beta feature still warns.
"""

import warnings

from dagster import BetaWarning, PreviewWarning

warnings.filterwarnings(
    "ignore",
    message=r"Specifying a partitions_def on an AssetCheckSpec is currently in preview",
    category=PreviewWarning,
)
warnings.filterwarnings(
    "ignore",
    message=r"Parameter `owners` of initializer `SensorDefinition.__init__` is currently in beta",
    category=BetaWarning,
)
