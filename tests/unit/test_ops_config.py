"""Operations config and pure builders: alarms.yaml, lake.yaml, metric datums."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from etl_platform.ops import metrics as m
from etl_platform.ops.alarms import AlarmConfigError, load_alarms, parse_alarms
from etl_platform.ops.security import (
    SecurityConfigError,
    lifecycle_rules,
    load_security_config,
    parse_security_config,
    render_policy,
)
from etl_platform.stream.consumer import BatchResult
from etl_platform.stream.producer import ProducerStats

REPO = Path(__file__).resolve().parents[2]
GOOD_ALARM = {"name": "A", "metric": "M", "threshold": 1, "comparison": "GreaterThanThreshold"}


# --- alarms ---------------------------------------------------------------------------------------
def test_committed_alarms_are_valid_and_cover_the_seed():
    alarms = {a.name: a for a in load_alarms(REPO / "config" / "alarms.yaml")}
    metrics_used = {a.metric for a in alarms.values()} | {a.arriving for a in alarms.values() if a.arriving}
    assert metrics_used == {
        m.WRITE_THROTTLED,
        m.WORKER_CPU,
        m.WORKER_MEMORY,
        m.DELIVERY_ERRORS,
        m.ITERATOR_AGE,
        m.INCOMING_RECORDS,
        m.RECORDS_READ,
    }
    delivery = next(a for a in alarms.values() if a.metric == m.DELIVERY_ERRORS)
    assert (delivery.threshold, delivery.comparison) == (0, "GreaterThanThreshold")
    assert all(a.description for a in alarms.values())
    # Where silence means a stall, silence pages: the lag alarm, and records arriving unread.
    assert alarms["Consumer-Lag"].treat_missing_data == "breaching"
    assert (alarms["Pipeline-Stalled"].arriving, alarms["Pipeline-Stalled"].metric) == (
        m.INCOMING_RECORDS,
        m.RECORDS_READ,
    )


@pytest.mark.parametrize(
    "mutate,fragment",
    [
        (lambda a: a.pop("metric"), "alarm 'A': missing required key `metric`"),
        (lambda a: a.update(treshold=3), "alarm 'A': unknown key(s) ['treshold']"),
        (lambda a: a.update(comparison=">"), "alarm 'A': `comparison` is '>'"),
        (lambda a: a.update(statistic="p99"), "alarm 'A': `statistic` is 'p99'"),
        (lambda a: a.update(period_s=90), "alarm 'A': `period_s` must be a multiple of 60"),
        (lambda a: a.update(evaluation_periods=0), "alarm 'A': `evaluation_periods` must be at least 1"),
        (lambda a: a.update(evaluation_periods=2, datapoints_to_alarm=3), "`datapoints_to_alarm` (3) exceeds"),
        (lambda a: a.update(period_s=3600, evaluation_periods=25), "exceeds one day"),
        (lambda a: a.update(threshold="high"), "alarm 'A': `threshold` must be a number"),
        (lambda a: a.update(treat_missing_data="zero"), "`treat_missing_data` is 'zero'"),
    ],
)
def test_alarm_validation_names_alarm_and_key(mutate, fragment):
    alarm = dict(GOOD_ALARM)
    mutate(alarm)
    with pytest.raises(AlarmConfigError) as err:
        parse_alarms({"alarms": [alarm]}, "alarms.yaml")
    assert fragment in str(err.value)
    assert str(err.value).startswith("alarms.yaml: ")


def test_alarm_file_level_errors(tmp_path):
    with pytest.raises(AlarmConfigError, match="duplicate alarm name"):
        parse_alarms({"alarms": [GOOD_ALARM, GOOD_ALARM]})
    with pytest.raises(AlarmConfigError, match="unknown top-level"):
        parse_alarms({"alarm": [GOOD_ALARM]})
    with pytest.raises(AlarmConfigError, match="AWS/"):
        parse_alarms({"namespace": "AWS/Kinesis", "alarms": [GOOD_ALARM]})
    bad = tmp_path / "alarms.yaml"
    bad.write_text("alarms: [unclosed")
    with pytest.raises(AlarmConfigError, match="not valid YAML"):
        load_alarms(bad)


STALL = {"name": "S", "stall": {"arriving": "In", "processed": "Out"}, "evaluation_periods": 3}


@pytest.mark.parametrize(
    "mutate,fragment",
    [
        (lambda a: a.update(threshold=1), "unknown key(s) ['threshold'] for a stall alarm"),
        (lambda a: a.update(metric="M"), "unknown key(s) ['metric'] for a stall alarm"),
        (lambda a: a.update(stall={"arriving": "In"}), "exactly `arriving` and `processed`"),
        (lambda a: a.update(stall={"arriving": "In", "processed": ""}), "`stall.processed` must be a metric name"),
        (lambda a: a.update(stall="In"), "exactly `arriving` and `processed`"),
    ],
)
def test_stall_alarm_validation(mutate, fragment):
    alarm = dict(STALL)
    mutate(alarm)
    with pytest.raises(AlarmConfigError) as err:
        parse_alarms({"alarms": [alarm]}, "alarms.yaml")
    assert fragment in str(err.value) and "alarm 'S'" in str(err.value)


def test_stall_alarm_definition():
    from etl_platform.ops.alarms import STALL_EXPRESSION, alarm_definition

    (alarm,) = parse_alarms({"alarms": [STALL]})
    assert alarm.condition() == "Sum(In) > 0 while Sum(Out) = 0 for 3 of 3 x 60s"
    spec = alarm_definition(alarm, "st")
    assert (spec["Threshold"], spec["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    assert spec["TreatMissingData"] == "notBreaching" and "MetricName" not in spec
    assert [q["Id"] for q in spec["Metrics"]] == ["arriving", "processed", "stalled"]
    assert spec["Metrics"][2] == {
        "Id": "stalled",
        "Expression": STALL_EXPRESSION,
        "Label": "S (1 = stalled)",
        "ReturnData": True,
    }


def test_metric_namespaces():
    assert m.metric_namespace(m.INCOMING_RECORDS, native=True) == "AWS/Kinesis"
    assert m.metric_namespace(m.ITERATOR_AGE, native=True) == "AWS/Kinesis"
    assert m.metric_namespace(m.RECORDS_READ, native=True) == "ETLPlatform"
    assert m.metric_namespace(m.INCOMING_RECORDS, native=False) == "ETLPlatform"

    class Settings:
        native_metrics = True

    assert m.native_metrics_for(Settings, "kinesis") and not m.native_metrics_for(Settings, "kafka")
    datums = m.producer_metrics("st", ProducerStats(sent=1, records=1, bytes=10))
    assert m.without_native(datums, native=True) == [] and m.without_native(datums, native=False) == datums


def test_heartbeat_reports_the_worst_age_once_per_interval():
    beat = m.Heartbeat(interval_s=30)
    assert beat.observe(5, now=0.0) == 5  # the first read reports at once
    assert beat.observe(900, now=10.0) is None
    assert beat.observe(20, now=20.0) is None
    assert beat.observe(0, now=31.0) == 900  # the worst since the last report
    beat.reset(now=40.0)  # a batch's metrics carried the age
    assert beat.observe(0, now=60.0) is None and beat.observe(0, now=71.0) == 0


def test_worker_memory_is_measured_against_the_limit():
    (datum,) = m.worker_memory_metrics("st")
    assert datum["MetricName"] == m.WORKER_MEMORY and 0 < datum["Value"] < 100
    limit, rss = m.memory_limit_bytes(), m.resident_bytes()
    assert limit is not None and rss is not None and 0 < rss < limit


def test_alarm_defaults_and_condition():
    (alarm,) = parse_alarms({"alarms": [dict(GOOD_ALARM, evaluation_periods=3)]})
    assert (alarm.statistic, alarm.period_s, alarm.datapoints_to_alarm) == ("Sum", 60, 3)
    assert alarm.condition() == "Sum(M) > 1 for 3 of 3 x 60s"
    assert alarm.breaches(2) and not alarm.breaches(1)


# --- metrics --------------------------------------------------------------------------------------
def test_batch_metrics_from_a_committed_batch():
    result = BatchResult(
        shard_id="s-0",
        records=10,
        events=9,
        errors=1,
        anomalies=2,
        committed=True,
        millis_behind_latest=1500,
        max_latency_s=4.5,
        timings={"total": 0.8},
        cpu_s=0.6,
        state_bytes=4096,
        duplicates=3,
    )
    datums = {d["MetricName"]: d for d in m.batch_metrics("st", result)}
    assert datums[m.RECORDS_READ]["Value"] == 10
    assert datums[m.RECORDS_PROCESSED]["Value"] == 9
    assert datums[m.DUPLICATE_EVENTS]["Value"] == 3
    assert datums[m.CHECKPOINT_SIZE]["Value"] == 4096 and datums[m.CHECKPOINT_SIZE]["Unit"] == "Bytes"
    assert datums[m.WORKER_CPU]["Value"] == 75.0  # 0.6 s of CPU over 0.8 s of stages
    assert datums[m.RECORDS_REJECTED]["Value"] == 1
    assert datums[m.ANOMALIES]["Value"] == 2
    assert datums[m.ITERATOR_AGE]["Value"] == 1500 and datums[m.ITERATOR_AGE]["Unit"] == "Milliseconds"
    assert datums[m.DELIVERY_FRESHNESS]["Value"] == 4.5
    assert (datums[m.DELIVERY_SUCCESS]["Value"], datums[m.DELIVERY_ERRORS]["Value"]) == (1, 0)
    assert datums[m.BATCH_DURATION]["Value"] == 0.8
    assert (datums[m.SEARCH_INDEXED]["Value"], datums[m.SEARCH_FAILED]["Value"]) == (0, 0)
    assert all(d["Dimensions"] == [{"Name": "StreamName", "Value": "st"}] for d in datums.values())
    # An empty poll reports only the iterator age.
    assert [d["MetricName"] for d in m.batch_metrics("st", BatchResult(shard_id="s-0"))] == [m.ITERATOR_AGE]
    failed = {d["MetricName"]: d["Value"] for d in m.failed_batch_metrics("st")}
    assert failed == {m.DELIVERY_SUCCESS: 0, m.DELIVERY_ERRORS: 1}


def test_producer_metrics():
    stats = ProducerStats(
        sent=100,
        records=40,
        bytes=12_345,
        error_codes=Counter({"ProvisionedThroughputExceededException": 3, "InternalFailure": 1}),
    )
    datums = {d["MetricName"]: d["Value"] for d in m.producer_metrics("st", stats)}
    assert datums == {m.INCOMING_RECORDS: 40, m.INCOMING_BYTES: 12_345, m.WRITE_THROTTLED: 3}


def test_combine_datapoints():
    points = [
        {"Sum": 10, "SampleCount": 2, "Maximum": 7, "Minimum": 3},
        {"Sum": 30, "SampleCount": 3, "Maximum": 12, "Minimum": 9},
    ]
    assert m.combine_datapoints(points, "Sum") == 40
    assert m.combine_datapoints(points, "Average") == 8
    assert m.combine_datapoints(points, "Maximum") == 12
    assert m.combine_datapoints(points, "Minimum") == 3
    assert m.combine_datapoints([], "Sum") is None


# --- lake.yaml ------------------------------------------------------------------------------------
def test_committed_lake_config():
    config = load_security_config(REPO / "config" / "lake.yaml")
    rules = {r["ID"]: r for r in lifecycle_rules(config)}
    assert rules["etl-raw"]["Transitions"] == [{"Days": 30, "StorageClass": "STANDARD_IA"}]
    assert rules["etl-raw"]["Expiration"] == {"Days": 365}
    assert rules["etl-errors"]["Expiration"] == {"Days": 90}
    assert "etl-abort-incomplete-multipart" in rules
    # Checkpoints, state and outboxes never expire.
    assert not any(r["Filter"]["Prefix"].startswith("_") for r in rules.values())


def test_lifecycle_rules_cover_every_lake_root():
    config = load_security_config(REPO / "config" / "lake.yaml")
    default = lifecycle_rules(config)
    rules = lifecycle_rules(config, ["", "seed/", "seed/", "msk-events/"])
    by_id = {r["ID"]: r for r in rules}
    assert len(by_id) == len(rules)  # IDs stay unique
    assert by_id["etl-seed/raw"]["Filter"] == {"Prefix": "seed/raw/"}
    assert by_id["etl-seed/raw"]["Transitions"] == by_id["etl-raw"]["Transitions"]
    assert by_id["etl-msk-events/errors"]["Expiration"] == {"Days": 90}
    # The default root's rules are the ones without roots; one bucket-wide multipart rule; no repeats.
    assert [r for r in rules if "/" not in r["ID"]] == default
    assert len(rules) == 3 * len(config.lifecycle) + 1
    with pytest.raises(ValueError, match="lake root"):
        lifecycle_rules(config, ["seed"])


@pytest.mark.parametrize(
    "patch,fragment",
    [
        ({"stream": {"retention_hours": 12}}, "stream.retention_hours must be in 24..8760"),
        ({"stream": {"encryption": "AES"}}, "stream.encryption 'AES'"),
        (
            {"bucket": {"lifecycle": {"raw": {"transition_to_ia_days": 7}}}},
            "bucket.lifecycle.raw.transition_to_ia_days",
        ),
        ({"bucket": {"lifecycle": {"raw": {"transition_to_ia_days": 30, "expire_days": 30}}}}, "must be after"),
        ({"bucket": {"lifecycle": {"_checkpoints": {"expire_days": 1}}}}, "never expire"),
        ({"bucket": {"lifecycle": {"raw": {"expire_day": 1}}}}, "unknown key(s) ['expire_day']"),
        ({"bucket": {"encrypt": "aws:kms"}}, "unknown key(s) ['encrypt'] under `bucket`"),
        ({"kms": {"alias": "etl"}}, "kms.alias 'etl'"),
        ({"stream": {"retention_hours": "24"}}, "stream.retention_hours must be an integer"),
    ],
)
def test_lake_config_errors_name_the_key(patch, fragment):
    data = yaml.safe_load((REPO / "config" / "lake.yaml").read_text())
    for section, values in patch.items():
        data[section] = {**data.get(section, {}), **values}
    with pytest.raises(SecurityConfigError) as err:
        parse_security_config(data, "lake.yaml")
    assert fragment in str(err.value)


def test_render_policy_fills_every_placeholder():
    values = {
        "AWS::Region": "us-east-1",
        "AWS::AccountId": "123456789012",
        "StreamName": "etl-events",
        "LakeBucket": "etl-lake",
        "LakeRoot": "",
        "KmsKeyId": "k-1",
        "OpenSearchDomain": "etl-search",
        "LeaseTable": "etl-platform-leases",
        "MskCluster": "etl-msk",
        "MskClusterUuid": "abcd-1",
        "KafkaTopicPrefix": "msk-",
    }
    policy = render_policy("consumer", values)
    assert "arn:aws:kinesis:us-east-1:123456789012:stream/etl-events" in str(policy)
    assert "arn:aws:s3:::etl-lake/raw/*" in str(policy)
    with pytest.raises(Exception, match="KmsKeyId"):
        render_policy("consumer", {k: v for k, v in values.items() if k != "KmsKeyId"})
    # Another pipeline's rendering: its own lake root and stream, nothing of the default pipeline's.
    seed = str(render_policy("consumer", {**values, "LakeRoot": "seed/", "StreamName": "seed-events"}))
    assert "arn:aws:s3:::etl-lake/seed/raw/*" in seed and "_state/seed-events/*" in seed
    assert "etl-lake/raw/*" not in seed and "etl-events" not in seed


def test_dagster_objects_load_with_the_platform_resources():
    """The schedule, its job, the alarm sensor and the failure hook resolve against build_resources()."""
    from dagster import Definitions, job, op

    from etl_platform.config import load_settings
    from resources import build_resources
    from sensors.alarms import alarm_sensors, delivery_failure_metrics
    from sensors.scaling_schedule import scaling_jobs, scaling_schedules

    @op
    def noop() -> None:
        pass

    @job(hooks={delivery_failure_metrics})
    def hooked() -> None:
        noop()

    defs = Definitions(
        jobs=[*scaling_jobs, hooked],
        schedules=scaling_schedules,
        sensors=alarm_sensors,
        resources=build_resources(load_settings({})),
    )
    Definitions.validate_loadable(defs)
    assert defs.get_schedule_def("kinesis_scaling_schedule").cron_schedule == "*/5 * * * *"
    assert defs.get_sensor_def("cloudwatch_alarms_sensor").minimum_interval_seconds == 60
