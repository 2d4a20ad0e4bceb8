"""Traces of micro-batches (OpenTelemetry): one span tree per batch a shard worker commits.

This module owns tracing of the data path: the exporter a process uses (`ETL_TRACE_EXPORTER` =
none | file | otlp, read by `etl_platform.config`), one tracer provider per exporter configuration
and process, the JSON-lines span file used locally, and `BatchTracer`, the consumer's `trace_batch`
hook (`stream.consumer.StreamConsumer`).

A batch's tree is built when the batch ends, from the `StageSpan`s its stages recorded as they
completed (`stream.consumer.stage`), with their real start and end times:

- the root, `micro_batch`, from its first stage's start to its last stage's end, carrying the batch's
  position and counts (`etl.pipeline`, `etl.stream`, `etl.shard_id`, `etl.first_sequence`,
  `etl.last_sequence`, `etl.records`, `etl.events`, `etl.errors`, ...) and the caller's attributes
  (a Dagster worker's `dagster.run_id` and `dagster.job_name`);
- a child per *run* of a stage (read, decode, transform, analytics, search_indexing, lease,
  raw_delivery, processed_delivery, state, commit): a stage that runs several times in a batch (a
  read per poll, decode/analytics/search per read, processed_delivery and state twice per flush) has
  a child per run, named after the stage, with its process CPU seconds as `etl.cpu_s`.

The consumer's hot path only appends tuples; idle polls leave none, so they make no spans. A batch
that fails before its commit still gets its tree: the root's status is ERROR with the exception
recorded, and so is the stage's that raised.

Exporters: `file` (local default) appends one JSON object per span to `ETL_TRACE_FILE` (default
`traces/spans.jsonl` in the local stack's directory), synchronously, so a batch's spans are on disk
when it returns; `otlp` (aws default) sends them in the background over OTLP/HTTP to
`OTEL_EXPORTER_OTLP_ENDPOINT` (the AWS Distro for OpenTelemetry collector sidecar, which exports to
X-Ray), with X-Ray-compatible trace ids; what is still queued is sent at process exit.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from etl_platform.config import DEFAULT_OTLP_ENDPOINT, TRACE_EXPORTERS, ConfigError, Settings
from etl_platform.stream.consumer import BatchResult

SERVICE_NAME = "etl-platform"
ROOT_SPAN = "micro_batch"
INSTRUMENTATION = "etl_platform.stream.consumer"
# Local traces are for looking at, not keeping: past this size the file is moved to <file>.1.
TRACE_FILE_MAX_BYTES = 64 * 1024 * 1024

AttributeValue = str | bool | int | float


@dataclass(frozen=True)
class TraceConfig:
    """Where a process's batch traces go (`Settings.trace_*`; the Dagster layer's TracingResource)."""

    exporter: str = "none"  # none | file | otlp
    file: str | None = None  # the file exporter's path; None: `default_trace_file()`
    otlp_endpoint: str = DEFAULT_OTLP_ENDPOINT  # OTLP/HTTP base URL; spans go to <it>/v1/traces
    xray_ids: bool = False  # X-Ray-compatible trace ids (the aws profile)

    def __post_init__(self) -> None:
        if self.exporter not in TRACE_EXPORTERS:
            raise ConfigError(f"trace exporter {self.exporter!r} is not one of {', '.join(TRACE_EXPORTERS)}")

    @classmethod
    def from_settings(cls, settings: Settings) -> TraceConfig:
        return cls(settings.trace_exporter, settings.trace_file, settings.otlp_endpoint, settings.profile == "aws")


def default_trace_file() -> Path:
    """`traces/spans.jsonl` in the local stack's directory (`ETL_STACK_DIR`, default `.stack/`)."""
    # Imported here: the stack package costs ~70 ms to import and only the file exporter needs it.
    from etl_platform.stack.service import StackPaths

    return StackPaths.default().root / "traces" / "spans.jsonl"


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="microseconds")


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as the file exporter writes it (one JSON object per line)."""
    context, parent = span.get_span_context(), span.parent
    assert context is not None  # an SDK span always has one
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_span_id": format(parent.span_id, "016x") if parent is not None else None,
        "name": span.name,
        "start": _iso(span.start_time),
        "end": _iso(span.end_time),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "attributes": dict(span.attributes or {}),
        "status": {"code": span.status.status_code.name, "description": span.status.description},
        "events": [
            {"name": event.name, "time": _iso(event.timestamp), "attributes": dict(event.attributes or {})}
            for event in span.events
        ],
        "service": span.resource.attributes.get("service.name"),
    }


class JsonLinesSpanExporter(SpanExporter):
    """Appends spans to a file, one JSON object per line (`span_record`). Several processes may share the
    file: each export is one `write` on an O_APPEND descriptor, so their lines never interleave."""

    def __init__(self, path: str | Path, max_bytes: int = TRACE_FILE_MAX_BYTES) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        data = "".join(json.dumps(span_record(span), default=str) + "\n" for span in spans).encode()
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                if self.path.stat().st_size >= self.max_bytes:
                    os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            except FileNotFoundError:
                pass  # not written yet (or just rotated by another process)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass  # nothing held open between exports

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True  # every export is written before it returns


def _resource() -> Resource:
    """The SDK's resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, which a deployment sets per
    container), named `etl-platform` when the environment names no service."""
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    return resource


@functools.cache
def tracer_provider(config: TraceConfig) -> TracerProvider | None:
    """This process's provider for `config` (made once; it flushes and shuts down at exit); None when
    tracing is off. Not the global provider: the platform's spans stay out of other libraries' way."""
    if config.exporter == "none":
        return None
    id_generator = None
    if config.xray_ids:
        from opentelemetry.sdk.extension.aws.trace import AwsXRayIdGenerator

        id_generator = AwsXRayIdGenerator()  # trace ids start with the epoch second, as X-Ray requires
    provider = TracerProvider(resource=_resource(), id_generator=id_generator)
    if config.exporter == "file":
        # Synchronous: a batch makes about a dozen spans, and a local file write is cheap.
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(config.file or default_trace_file())))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # In the background: the collector is a network hop, never on the worker's path.
        exporter = OTLPSpanExporter(endpoint=f"{config.otlp_endpoint.rstrip('/')}/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class BatchTracer:
    """The consumer's `trace_batch` hook: emits the span tree of a batch when it commits (error None)
    or fails (the exception), as the module docstring describes.

    `tracer` is a tracer, or a function making one at the first batch (so a process that never commits
    a batch, e.g. the supervisor sensor's, starts no exporter)."""

    def __init__(
        self,
        tracer: Tracer | Callable[[], Tracer],
        pipeline: str,
        stream: str,
        attributes: Mapping[str, AttributeValue | None] | None = None,
    ) -> None:
        self._tracer = tracer if isinstance(tracer, Tracer) else None
        self._make_tracer = None if isinstance(tracer, Tracer) else tracer
        self.pipeline, self.stream = pipeline, stream
        # None values (e.g. no job name) are left out: span attributes cannot be null.
        self.attributes = {k: v for k, v in (attributes or {}).items() if v is not None}

    @property
    def tracer(self) -> Tracer:
        if self._tracer is None:
            assert self._make_tracer is not None
            self._tracer = self._make_tracer()
        return self._tracer

    def root_attributes(self, result: BatchResult) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {
            "etl.pipeline": self.pipeline,
            "etl.stream": self.stream,
            "etl.shard_id": result.shard_id,
            "etl.records": result.records,
            "etl.events": result.events,
            "etl.errors": result.errors,
            "etl.anomalies": result.anomalies,
            "etl.committed": result.committed,
            "etl.millis_behind_latest": result.millis_behind_latest,
            "etl.cpu_s": result.cpu_s,
            "etl.state_bytes": result.state_bytes,
        }
        if result.first_sequence is not None:
            attributes["etl.first_sequence"] = result.first_sequence
        if result.last_sequence is not None:
            attributes["etl.last_sequence"] = result.last_sequence
        return {**attributes, **self.attributes}

    def __call__(self, result: BatchResult, error: BaseException | None = None) -> None:
        stages = result.stage_spans
        if not stages:
            return
        start, end = min(s.start_ns for s in stages), max(s.end_ns for s in stages)
        tracer = self.tracer
        root = tracer.start_span(
            ROOT_SPAN, kind=SpanKind.CONSUMER, start_time=start, attributes=self.root_attributes(result)
        )
        parent = trace.set_span_in_context(root)
        for run in stages:
            child = tracer.start_span(
                run.name, context=parent, start_time=run.start_ns, attributes={"etl.cpu_s": run.cpu_s}
            )
            if run.error is not None:
                child.set_status(Status(StatusCode.ERROR, run.error))
            child.end(end_time=run.end_ns)
        if error is None:
            root.set_status(Status(StatusCode.OK))
        else:
            root.record_exception(error, timestamp=end, escaped=True)
            root.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        root.end(end_time=end)


def batch_tracer(
    config: TraceConfig,
    pipeline: str,
    stream: str,
    attributes: Mapping[str, AttributeValue | None] | None = None,
) -> BatchTracer | None:
    """The consumer's hook for `config` (None when tracing is off); its provider is made at the first
    batch, once per process and configuration."""
    if config.exporter == "none":
        return None

    def make() -> Tracer:
        provider = tracer_provider(config)
        assert provider is not None
        return provider.get_tracer(INSTRUMENTATION)

    return BatchTracer(make, pipeline, stream, attributes)
