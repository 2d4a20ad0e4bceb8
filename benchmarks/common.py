"""What every benchmark's entry point shares: settings for the local stack, and failing like the CLI.

`stack_benchmark(*servers)` wraps a benchmark's `main()`: it first checks that the local servers it
needs (keys of etl_platform.config.LOCAL_PORTS) answer, and turns what `main` raises into the CLI's
one-line message and exit code (etl_platform.cli.failures), e.g. "the local stack is not running —
run `etl-platform stack up`" instead of a botocore traceback. ETL_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from etl_platform.cli.failures import debug_from_env, require_stack, run
from etl_platform.config import LOCAL_PORTS, Settings, load_settings


def local_settings() -> Settings:
    """The local profile whatever ETL_PROFILE says (benchmarks measure the local stack), with the
    ETL_*_PORT overrides of a stack on other ports honoured."""
    ports = {var: os.environ[var] for var, _ in LOCAL_PORTS.values() if var in os.environ}
    return load_settings(ports)


def stack_benchmark(*servers: str) -> Callable[[Callable[..., Any]], Callable[..., None]]:
    """Decorator for a benchmark's `main`: fail at once, in one line, when `servers` are down; exit with
    the CLI's code (1 runtime, 2 usage, 130 Ctrl-C) when `main` fails."""

    def wrap(main: Callable[..., Any]) -> Callable[..., None]:
        # Under `python -m` the module is __main__; its spec keeps the name the user typed.
        spec = getattr(sys.modules.get(main.__module__), "__spec__", None)
        name = spec.name if spec is not None else main.__module__

        @functools.wraps(main)
        def entry(*args: Any, **kwargs: Any) -> None:
            def body() -> int:
                require_stack(local_settings(), *servers)
                main(*args, **kwargs)
                return 0

            code = run(name, body, debug=debug_from_env(), settings=local_settings)
            if code:
                sys.exit(code)

        return entry

    return wrap
