"""The live dashboard page: OpenSearch aggregations, the lease table and CloudWatch metrics per pipeline,
refreshed every second in the browser.

Owns: the questions the page shares with the OpenSearch Dashboards saved objects (`questions`); the
data layer, plain rows per panel (`data`); the page, a Dash app (`layout`); `serve` and
`python -m etl_platform.dashboard`; the page's port (ETL_DASHBOARD_PORT) and URL.
May import: `ops`, `stream`, `search`, `pipelines` and below; never Dagster. Importing this package
does not import Dash (the CLI reads `dashboard_url` from here).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from etl_platform.config import ConfigError, Settings

if TYPE_CHECKING:
    from etl_platform.pipelines import Pipelines

HOST = "127.0.0.1"  # loopback only: the page has no authentication of its own
PORT_VAR = "ETL_DASHBOARD_PORT"
DEFAULT_PORT = 8050  # Dash's usual port


def dashboard_port(env: Mapping[str, str] | None = None) -> int:
    """ETL_DASHBOARD_PORT (default 8050); ConfigError naming it when it is not a TCP port."""
    env = os.environ if env is None else env
    raw = env.get(PORT_VAR, "")
    if raw == "":
        return DEFAULT_PORT
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"{PORT_VAR}={raw!r} is not a TCP port (1-65535)")
    return int(raw)


def dashboard_url(env: Mapping[str, str] | None = None, host: str = HOST) -> str:
    """Where `make dev` (and `python -m etl_platform.dashboard`) serves the page."""
    return f"http://{host}:{dashboard_port(env)}"


def serve(
    settings: Settings,
    host: str = HOST,
    port: int | None = None,
    pipelines: Pipelines | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Serve the page until interrupted. Everything is checked before the server starts: a bad
    setting (profile, pipelines file, port, credentials) raises ConfigError naming it."""
    from etl_platform.dashboard.data import PipelineView, Sources
    from etl_platform.dashboard.layout import build_app
    from etl_platform.pipelines import load_pipelines

    env = os.environ if env is None else env
    port = dashboard_port(env) if port is None else port
    pipelines = load_pipelines(settings, env) if pipelines is None else pipelines
    views = {p.name: PipelineView.of(p, settings) for p in pipelines}
    app = build_app(Sources.connect(settings, env), views)
    print(f"dashboard: {dashboard_url({PORT_VAR: str(port)}, host)} ({', '.join(views)})", flush=True)
    # Not a line per request: the page asks several times a second, and `make dev` shares the terminal.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    # Flask's threaded development server: one thread per request, enough for a loopback page.
    app.run(host=host, port=port, debug=False)
