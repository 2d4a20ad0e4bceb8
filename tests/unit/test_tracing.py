"""Micro-batch traces (etl_platform.ops.tracing): the span tree built from a batch's measured stages, its
error form, the JSON-lines file exporter and the exporter settings. No servers: the SDK's in-memory
exporter, and files under tmp_path."""

from __future__ import annotations

import json
import time

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from etl_platform.config import ConfigError
from etl_platform.ops.tracing import (
    ROOT_SPAN,
    BatchTracer,
    JsonLinesSpanExporter,
    TraceConfig,
    batch_tracer,
    tracer_provider,
)
from etl_platform.stream.consumer import BatchResult, stage

STAGES = ["read", "decode", "analytics", "read", "decode", "analytics", "raw_delivery", "state", "commit"]


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test"), exporter
    provider.shutdown()


def measured_batch(stages: list[str]) -> BatchResult:
    """A batch whose stages really ran (`stage` measures them as the consumer does), in this order."""
    result = BatchResult("shardId-000000000001", first_sequence="4960001", last_sequence="4960099", records=99)
    result.events, result.errors = 97, 2
    for name in stages:
        with stage(result, name):
            time.sleep(0.002)
            sum(i * i for i in range(20_000))  # some CPU
    return result


def test_a_batch_is_one_root_with_a_child_per_stage_run(spans):
    tracer, exporter = spans
    result = measured_batch(STAGES)
    result.committed = True

    BatchTracer(tracer, "seed", "seed-events", {"dagster.run_id": "run-1", "dagster.job_name": None})(result)

    finished = exporter.get_finished_spans()
    roots = [s for s in finished if s.parent is None]
    assert [r.name for r in roots] == [ROOT_SPAN]
    root = roots[0]
    children = [s for s in finished if s.parent is not None]
    # A stage that ran twice has two children, in the order they ran, with the times `stage` measured.
    assert [c.name for c in children] == STAGES
    assert [(c.start_time, c.end_time) for c in children] == [(s.start_ns, s.end_ns) for s in result.stage_spans]
    root_context = root.get_span_context()
    assert root_context is not None
    for child in children:
        assert child.parent is not None and child.parent.span_id == root_context.span_id
        assert child.get_span_context().trace_id == root_context.trace_id
        assert root.start_time <= child.start_time <= child.end_time <= root.end_time
        assert child.status.status_code is StatusCode.UNSET
    assert root.start_time == children[0].start_time and root.end_time == children[-1].end_time
    # A child lasts what the batch's timing says of it.
    reads = [c.end_time - c.start_time for c in children if c.name == "read"]
    assert sum(reads) / 1e9 == pytest.approx(result.timings["read"], abs=1e-6)
    assert root.attributes is not None
    assert {k: root.attributes[k] for k in root.attributes if not k.startswith("etl.cpu")} == {
        "etl.pipeline": "seed",
        "etl.stream": "seed-events",
        "etl.shard_id": "shardId-000000000001",
        "etl.first_sequence": "4960001",
        "etl.last_sequence": "4960099",
        "etl.records": 99,
        "etl.events": 97,
        "etl.errors": 2,
        "etl.anomalies": 0,
        "etl.committed": True,
        "etl.millis_behind_latest": 0,
        "etl.state_bytes": 0,
        "dagster.run_id": "run-1",  # the job name was None: left out
    }
    assert root.attributes["etl.cpu_s"] == pytest.approx(sum(c.attributes["etl.cpu_s"] for c in children))
    assert root.status.status_code is StatusCode.OK


def test_stage_adds_up_cpu_like_the_timings(spans):
    result = measured_batch(STAGES)
    assert result.cpu_s > 0
    assert result.cpu_s == pytest.approx(sum(s.cpu_s for s in result.stage_spans))
    assert set(result.timings) == set(STAGES)
    assert sum(result.timings.values()) == pytest.approx(sum(s.end_ns - s.start_ns for s in result.stage_spans) / 1e9)


def test_a_batch_that_fails_before_its_commit_ends_in_error(spans):
    tracer, exporter = spans
    error = TimeoutError("sink down")
    # What the consumer holds when a stage raised: the stages so far, the failed one last.
    result = measured_batch(["read", "decode"])
    with pytest.raises(TimeoutError):
        with stage(result, "search_indexing"):
            raise error

    BatchTracer(tracer, "default", "etl-events")(result, error)

    finished = {s.name: s for s in exporter.get_finished_spans()}
    assert set(finished) == {ROOT_SPAN, "read", "decode", "search_indexing"}
    root, failed = finished[ROOT_SPAN], finished["search_indexing"]
    assert root.status.status_code is StatusCode.ERROR and root.status.description == "TimeoutError: sink down"
    assert [e.name for e in root.events] == ["exception"]
    assert failed.status.status_code is StatusCode.ERROR and failed.status.description == "TimeoutError: sink down"
    assert finished["decode"].status.status_code is StatusCode.UNSET
    assert root.attributes is not None and root.attributes["etl.committed"] is False


def test_a_batch_without_stages_makes_no_spans(spans):
    tracer, exporter = spans
    BatchTracer(tracer, "default", "etl-events")(BatchResult("shardId-000000000000"))
    assert exporter.get_finished_spans() == ()


def test_the_file_exporter_writes_a_json_line_per_span_with_xray_ids(tmp_path, monkeypatch):
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    path = tmp_path / "traces" / "spans.jsonl"
    config = TraceConfig("file", str(path), xray_ids=True)
    hook = batch_tracer(config, "default", "etl-events", {"dagster.run_id": "run-7"})
    assert hook is not None
    result = measured_batch(["read", "decode", "commit"])

    hook(result)

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["name"] for line in lines] == ["read", "decode", "commit", ROOT_SPAN]  # as they end
    root = lines[-1]
    assert root["parent_span_id"] is None and root["attributes"]["dagster.run_id"] == "run-7"
    assert root["status"] == {"code": "OK", "description": None} and root["service"] == "etl-platform"
    for child in lines[:-1]:
        assert child["parent_span_id"] == root["span_id"] and child["trace_id"] == root["trace_id"]
        assert root["start_ns"] <= child["start_ns"] <= child["end_ns"] <= root["end_ns"]
        assert child["start"].endswith("+00:00")
    # X-Ray ids: the trace id starts with the epoch second it was made in.
    assert len(root["trace_id"]) == 32 and abs(int(root["trace_id"][:8], 16) - time.time()) < 60
    assert tracer_provider(config) is tracer_provider(TraceConfig("file", str(path), xray_ids=True))  # one per process


def test_a_deployments_service_name_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("OTEL_SERVICE_NAME", "etl-prod-worker")  # as the deployment sets it per container
    path = tmp_path / "spans.jsonl"
    hook = batch_tracer(TraceConfig("file", str(path)), "default", "etl-events")
    assert hook is not None
    hook(measured_batch(["read"]))
    assert {json.loads(line)["service"] for line in path.read_text().splitlines()} == {"etl-prod-worker"}


def test_the_trace_file_is_rotated_past_its_size(tmp_path):
    path = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path, max_bytes=1_000)))
    hook = BatchTracer(provider.get_tracer("test"), "default", "etl-events")
    for _ in range(4):
        hook(measured_batch(["read", "decode", "commit"]))
    rotated = path.with_name("spans.jsonl.1")
    # Moved once past the limit; a file grows past it by one span's line at most (each under 1,000 bytes).
    assert rotated.stat().st_size >= 1_000 and path.stat().st_size < 2 * 1_000
    for file in (path, rotated):
        assert all(json.loads(line)["trace_id"] for line in file.read_text().splitlines())


def test_exporter_settings():
    assert batch_tracer(TraceConfig("none"), "default", "etl-events") is None
    with pytest.raises(ConfigError, match="'jaeger'"):
        TraceConfig("jaeger")
