"""`python -m etl_platform.dashboard`: the live page on 127.0.0.1, port ETL_DASHBOARD_PORT (default 8050)."""

from __future__ import annotations

import sys

from etl_platform.config import ConfigError, load_settings
from etl_platform.dashboard import HOST, serve


def main() -> int:
    try:
        serve(load_settings(), HOST)
    except ConfigError as exc:
        print(f"dashboard: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
