"""How the command line (and the benchmarks) report what went wrong: one line on stderr, never a traceback.

Owns: `UserError` (a mistake the user can fix, with what to do about it), `require_stack` (the local
profile's quick check that the servers a command needs answer), `describe` (an exception -> exit code
and message, or None for a bug) and `run`, the single error boundary `main` and the benchmarks go
through. Messages read `<command>: <what is wrong> — <what to do>`, except a bad setting's, which reads
`configuration error: <the setting and what is wrong with it>` as it always has (scripts match it); exit
2 for usage and configuration mistakes, 1 for runtime failures, 130 after Ctrl-C. `--debug` (or
ETL_DEBUG=1) re-raises instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from etl_platform.config import ConfigError, Settings, local_port

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
CONFIG_ERROR = "configuration error: "
STACK_UP = "run `etl-platform stack up`"
DEBUG_VAR = "ETL_DEBUG"


class UserError(Exception):
    """A mistake the user can fix: what is wrong, what to do, and the exit code."""

    def __init__(self, what: str, todo: str = "", code: int = EXIT_RUNTIME) -> None:
        super().__init__(what)
        self.what, self.todo, self.code = what, todo, code

    def line(self) -> str:
        return f"{self.what} — {self.todo}" if self.todo else self.what


def debug_from_env() -> bool:
    return os.environ.get(DEBUG_VAR, "").strip().lower() in ("1", "true", "yes")


def require_stack(settings: Settings, *services: str) -> None:
    """In the local profile, fail at once (rather than after the clients' retries, or never for Kafka)
    when a server `services` names (keys of config.LOCAL_PORTS) does not answer on its port."""
    if settings.profile != "local":
        return
    from etl_platform.stack.service import port_open

    down = [f"{name} on port {local_port(name)}" for name in services if not port_open("127.0.0.1", local_port(name))]
    if down:
        raise UserError(f"the local stack is not running ({', '.join(down)} not answering)", STACK_UP)


def _unreachable(settings: Settings | None, what: str) -> tuple[int, str]:
    if settings is None or settings.profile == "local":
        return EXIT_RUNTIME, f"the local stack is not running ({what} does not answer) — {STACK_UP}"
    return EXIT_RUNTIME, f"cannot reach {what} — check the network and the ETL_* endpoint settings"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _describe_one(exc: BaseException, settings: Settings | None) -> tuple[int, str] | None:
    # Only look at client libraries already imported: no exception of theirs can exist otherwise,
    # and importing them here would slow every command down.
    botocore = sys.modules.get("botocore.exceptions")
    psycopg = sys.modules.get("psycopg")
    opensearch = sys.modules.get("opensearchpy.exceptions")
    kafka = sys.modules.get("confluent_kafka")
    stack = sys.modules.get("etl_platform.stack.service")
    if isinstance(exc, UserError):
        return exc.code, exc.line()
    if isinstance(exc, ConfigError):
        return EXIT_USAGE, CONFIG_ERROR + str(exc)
    if botocore is not None:
        if isinstance(exc, botocore.NoCredentialsError | botocore.PartialCredentialsError):
            return EXIT_USAGE, (
                "no AWS credentials found — set AWS_PROFILE (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), "
                "or run `aws sso login`"
            )
        if isinstance(exc, botocore.EndpointConnectionError | botocore.ConnectTimeoutError):
            endpoint = str(getattr(exc, "kwargs", {}).get("endpoint_url", "the AWS endpoint"))
            return _unreachable(settings, endpoint.split("?")[0])
        if isinstance(exc, botocore.ClientError):
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in ("ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId", "UnrecognizedClientException"):
                return EXIT_USAGE, f"the AWS credentials were refused ({code}) — renew them (`aws sso login`)"
            if code in ("ResourceNotFoundException", "NoSuchBucket"):
                local = settings is None or settings.profile == "local"
                todo = STACK_UP + " (it creates every stream, bucket and table)" if local else "deploy it"
                return EXIT_RUNTIME, f"{_first_line(exc)} — {todo}"
            return EXIT_RUNTIME, f"{_first_line(exc)} — check the permissions and the names in the ETL_* settings"
    if psycopg is not None and isinstance(exc, psycopg.OperationalError):
        return _unreachable(settings, f"the warehouse ({_first_line(exc)})")
    if opensearch is not None and isinstance(exc, opensearch.ConnectionError):
        return _unreachable(settings, f"OpenSearch at {settings.opensearch_url}" if settings else "OpenSearch")
    if kafka is not None and isinstance(exc, kafka.KafkaException):
        error: Any = exc.args[0] if exc.args else None
        transport = (kafka.KafkaError._TRANSPORT, kafka.KafkaError._ALL_BROKERS_DOWN, kafka.KafkaError._TIMED_OUT)
        if error is not None and isinstance(error, kafka.KafkaError) and error.code() in transport:
            where = f" at {settings.kafka_bootstrap}" if settings and settings.kafka_bootstrap else ""
            return _unreachable(settings, f"the Kafka broker{where}")
    if isinstance(exc, BrokenPipeError):
        return EXIT_RUNTIME, ""  # the reader went away (`| head`): nothing to say
    if isinstance(exc, ConnectionError):  # the built-in one: refused or reset while talking to a server
        return _unreachable(settings, _first_line(exc))
    if isinstance(exc, OSError) and exc.filename is not None:
        reason = (exc.strerror or _first_line(exc)).lower()
        return EXIT_USAGE, f"cannot read {exc.filename}: {reason} — check the path"
    if stack is not None and isinstance(exc, stack.StackError):
        return EXIT_RUNTIME, str(exc)  # says which server and, on a failed start, its log's last lines
    return None


def describe(exc: BaseException, settings: Settings | None = None) -> tuple[int, str] | None:
    """The exit code and one-line message for a failure the user can act on; None for a bug.

    Looks through the chain of causes, since clients wrap connection errors in their own exceptions.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = _describe_one(current, settings)
        if found is not None:
            return found
        current = current.__cause__ or current.__context__
    return None


def run(
    name: str,
    body: Callable[[], int | None],
    debug: bool = False,
    settings: Callable[[], Settings | None] | None = None,
) -> int:
    """Run `body` and turn what it raises into one line on stderr prefixed by `name`; its exit code.

    `settings` gives the settings the body ran with, if it got that far (None: the local profile's
    wording), for naming an unreachable server. With `debug`, exceptions propagate with their traceback.
    """
    try:
        return int(body() or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        return EXIT_INTERRUPTED
    except Exception as exc:
        if debug:
            raise
        found = describe(exc, settings() if settings else None)
        code, message = found or (
            EXIT_RUNTIME,
            f"internal error: {type(exc).__name__}: {_first_line(exc)} (run with --debug for the traceback)",
        )
        if message:
            print(message if message.startswith(CONFIG_ERROR) else f"{name}: {message}", file=sys.stderr)
        return code
