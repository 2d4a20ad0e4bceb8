"""CloudWatch alarms from `config/alarms.yaml`: validate, create in CloudWatch, and evaluate locally.

In AWS, CloudWatch evaluates the alarms `apply_alarms` creates and notifies their SNS actions. moto
stores alarms but never evaluates them, and an alert sink other than SNS (the webhook, the Dagster
log) needs to hear about breaches too, so `evaluate` re-implements the evaluation from the raw
statistics: the alarm's statistic per period over its last `evaluation_periods` complete periods,
compared with the threshold, ALARM when at least `datapoints_to_alarm` of them breach.

Missing data follows `treat_missing_data`: `breaching` / `notBreaching` count a period without data
as breaching / not; `missing` and `ignore` leave it out (all periods missing is INSUFFICIENT_DATA).
This is CloudWatch's rule without its look-back beyond the evaluation range for `missing`. Locally,
periods before `since` (when evaluation began) are left out too, so a stack that just started does
not page for the silence before its workers existed.

Where silence means a stall, alarms say so: the consumer-lag alarm treats missing data as breaching
(workers publish their iterator age while idle, so silence means no worker), and a *stall* alarm
(`stall: {arriving, processed}`) breaches a period in which records arrived and none were
processed. In CloudWatch it is a metric-math alarm, `IF(FILL(arriving,0) > 0 AND
FILL(processed,0) <= 0, 1, 0) >= 1`; here the same rule is applied to the two sums.

Metrics Kinesis measures itself are read from `AWS/Kinesis` when `native` (`metrics.metric_namespace`).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from etl_platform.config import ConfigError, read_yaml
from etl_platform.ops.metrics import DIMENSION, NAMESPACE, STATISTICS, combine_datapoints, metric_namespace

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "config" / "alarms.yaml"
COMPARISONS: Mapping[str, Callable[[float, float], bool]] = {
    "GreaterThanThreshold": operator.gt,
    "GreaterThanOrEqualToThreshold": operator.ge,
    "LessThanThreshold": operator.lt,
    "LessThanOrEqualToThreshold": operator.le,
}
SYMBOLS = {
    "GreaterThanThreshold": ">",
    "GreaterThanOrEqualToThreshold": ">=",
    "LessThanThreshold": "<",
    "LessThanOrEqualToThreshold": "<=",
}
TREAT_MISSING = ("missing", "notBreaching", "breaching", "ignore")
ALARM, OK, INSUFFICIENT = "ALARM", "OK", "INSUFFICIENT_DATA"
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_REQUIRED = ("name", "metric", "threshold", "comparison")
_OPTIONAL = ("statistic", "period_s", "evaluation_periods", "datapoints_to_alarm", "treat_missing_data", "description")
_STALL_REQUIRED = ("name", "stall")
_STALL_OPTIONAL = ("period_s", "evaluation_periods", "datapoints_to_alarm", "description")
STALL_EXPRESSION = "IF(FILL(arriving, 0) > 0 AND FILL(processed, 0) <= 0, 1, 0)"


class AlarmConfigError(ConfigError):
    """The alarms file is invalid; the message names the file, the alarm and the key."""


@dataclass(frozen=True)
class Alarm:
    name: str
    metric: str
    threshold: float
    comparison: str
    statistic: str = "Sum"
    period_s: int = 60
    evaluation_periods: int = 1
    datapoints_to_alarm: int = 1
    treat_missing_data: str = "missing"
    description: str = ""
    namespace: str = NAMESPACE
    arriving: str | None = None  # a stall alarm: `metric` (processed) is 0 while this one is not

    def breaches(self, value: float) -> bool:
        return COMPARISONS[self.comparison](value, self.threshold)

    def condition(self) -> str:
        """E.g. `Sum(DeliveryToS3.Errors) > 0 for 1 of 1 x 60s`."""
        if self.arriving:
            what = f"Sum({self.arriving}) > 0 while Sum({self.metric}) = 0"
        else:
            what = f"{self.statistic}({self.metric}) {SYMBOLS[self.comparison]} {self.threshold:g}"
        return f"{what} for {self.datapoints_to_alarm} of {self.evaluation_periods} x {self.period_s}s"

    def namespace_of(self, metric: str, native: bool) -> str:
        return metric_namespace(metric, native, self.namespace)


# --- loading --------------------------------------------------------------------------------------
def _number(value: Any, where: str, kind: type, minimum: float | None = None) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
        raise AlarmConfigError(f"{where} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if minimum is not None and value < minimum:
        raise AlarmConfigError(f"{where} must be at least {minimum}, got {value!r}")
    return kind(value)


def _one_of(value: Any, where: str, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise AlarmConfigError(f"{where} is {value!r}; expected one of {', '.join(allowed)}")
    return value


def parse_alarms(data: Any, source: str = "alarms") -> list[Alarm]:
    """Alarms from the parsed YAML document; every error names `source`, the alarm and the key."""
    if not isinstance(data, Mapping):
        raise AlarmConfigError(f"{source}: expected a mapping with an `alarms` list, got {type(data).__name__}")
    unknown = set(data) - {"namespace", "alarms"}
    if unknown:
        raise AlarmConfigError(f"{source}: unknown top-level key(s) {sorted(unknown)}; expected namespace, alarms")
    namespace = data.get("namespace", NAMESPACE)
    if not isinstance(namespace, str) or not namespace or namespace.startswith("AWS/"):
        raise AlarmConfigError(f"{source}: namespace {namespace!r} must be a non-empty custom namespace (not AWS/*)")
    entries = data.get("alarms")
    if not isinstance(entries, list) or not entries:
        raise AlarmConfigError(f"{source}: `alarms` must be a non-empty list")
    alarms: list[Alarm] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        label = f"{source}: alarm #{index + 1}"
        if not isinstance(entry, Mapping):
            raise AlarmConfigError(f"{label} must be a mapping, got {entry!r}")
        if isinstance(entry.get("name"), str):
            label = f"{source}: alarm {entry['name']!r}"
        stall = "stall" in entry
        required, optional = (_STALL_REQUIRED, _STALL_OPTIONAL) if stall else (_REQUIRED, _OPTIONAL)
        for key in required:
            if key not in entry:
                raise AlarmConfigError(f"{label}: missing required key `{key}`")
        unknown = set(entry) - set(required) - set(optional)
        if unknown:
            kind = "a stall alarm" if stall else "an alarm"
            raise AlarmConfigError(
                f"{label}: unknown key(s) {sorted(unknown)} for {kind}; allowed: {', '.join((*required, *optional))}"
            )
        arriving = None
        if stall:
            spec = entry["stall"]
            if not isinstance(spec, Mapping) or set(spec) != {"arriving", "processed"}:
                raise AlarmConfigError(f"{label}: `stall` must be a mapping with exactly `arriving` and `processed`")
            for key in ("arriving", "processed"):
                if not isinstance(spec[key], str) or not spec[key].strip():
                    raise AlarmConfigError(f"{label}: `stall.{key}` must be a metric name")
            arriving = spec["arriving"]
            # The rule is fixed: 1 for a stalled period, 0 otherwise; never missing (FILL).
            entry = {
                **entry,
                "metric": spec["processed"],
                "statistic": "Sum",
                "threshold": 1,
                "comparison": "GreaterThanOrEqualToThreshold",
                "treat_missing_data": "notBreaching",
            }
        name = entry["name"]
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise AlarmConfigError(f"{label}: `name` must match {_NAME_RE.pattern}")
        if name in seen:
            raise AlarmConfigError(f"{label}: duplicate alarm name")
        seen.add(name)
        metric = entry["metric"]
        if not isinstance(metric, str) or not metric.strip():
            raise AlarmConfigError(f"{label}: `metric` must be a non-empty string")
        period = _number(entry.get("period_s", 60), f"{label}: `period_s`", int, 60)
        if period % 60:
            raise AlarmConfigError(f"{label}: `period_s` must be a multiple of 60, got {period}")
        periods = _number(entry.get("evaluation_periods", 1), f"{label}: `evaluation_periods`", int, 1)
        if period * periods > 86_400:
            raise AlarmConfigError(
                f"{label}: `period_s` x `evaluation_periods` = {period * periods}s exceeds one day (CloudWatch's limit)"
            )
        to_alarm = _number(entry.get("datapoints_to_alarm", periods), f"{label}: `datapoints_to_alarm`", int, 1)
        if to_alarm > periods:
            raise AlarmConfigError(
                f"{label}: `datapoints_to_alarm` ({to_alarm}) exceeds `evaluation_periods` ({periods})"
            )
        description = entry.get("description", "")
        if not isinstance(description, str):
            raise AlarmConfigError(f"{label}: `description` must be a string")
        alarms.append(
            Alarm(
                name=name,
                metric=metric,
                threshold=_number(entry["threshold"], f"{label}: `threshold`", float),
                comparison=_one_of(entry["comparison"], f"{label}: `comparison`", COMPARISONS),
                statistic=_one_of(entry.get("statistic", "Sum"), f"{label}: `statistic`", STATISTICS),
                period_s=period,
                evaluation_periods=periods,
                datapoints_to_alarm=to_alarm,
                treat_missing_data=_one_of(
                    entry.get("treat_missing_data", "missing"), f"{label}: `treat_missing_data`", TREAT_MISSING
                ),
                description=description.strip(),
                namespace=namespace,
                arriving=arriving,
            )
        )
    return alarms


def load_alarms(path: str | Path | None = None) -> list[Alarm]:
    """Alarms from a YAML file (default `config/alarms.yaml`, or ETL_ALARMS_FILE)."""
    import os

    path = Path(path or os.environ.get("ETL_ALARMS_FILE") or DEFAULT_PATH)
    return parse_alarms(read_yaml(path, "alarms file", AlarmConfigError), str(path))


# --- CloudWatch -----------------------------------------------------------------------------------
def alarm_name(alarm: Alarm, stream: str) -> str:
    """CloudWatch alarm names are account-wide: prefix the stream so several deployments coexist."""
    return f"{stream}-{alarm.name}"


def _metric_stat(alarm: Alarm, metric: str, stream: str, native: bool, stat: str) -> dict[str, Any]:
    return {
        "Metric": {
            "Namespace": alarm.namespace_of(metric, native),
            "MetricName": metric,
            "Dimensions": [{"Name": DIMENSION, "Value": stream}],
        },
        "Period": alarm.period_s,
        "Stat": stat,
    }


def alarm_definition(alarm: Alarm, stream: str, native: bool = False) -> dict[str, Any]:
    """The alarm for `stream` as `put_metric_alarm`'s keyword arguments, without actions (the CDK app
    turns the same dict into an `AWS::CloudWatch::Alarm`). `native`: read what Kinesis measures from
    AWS/Kinesis."""
    spec: dict[str, Any] = {
        "AlarmName": alarm_name(alarm, stream),
        "AlarmDescription": alarm.description[:1024],
        "EvaluationPeriods": alarm.evaluation_periods,
        "DatapointsToAlarm": alarm.datapoints_to_alarm,
        "Threshold": alarm.threshold,
        "ComparisonOperator": alarm.comparison,
        "TreatMissingData": alarm.treat_missing_data,
    }
    if alarm.arriving:
        spec["Metrics"] = [
            {
                "Id": "arriving",
                "MetricStat": _metric_stat(alarm, alarm.arriving, stream, native, "Sum"),
                "ReturnData": False,
            },
            {
                "Id": "processed",
                "MetricStat": _metric_stat(alarm, alarm.metric, stream, native, "Sum"),
                "ReturnData": False,
            },
            {
                "Id": "stalled",
                "Expression": STALL_EXPRESSION,
                "Label": f"{alarm.name} (1 = stalled)",
                "ReturnData": True,
            },
        ]
        return spec
    spec.update(
        Namespace=alarm.namespace_of(alarm.metric, native),
        MetricName=alarm.metric,
        Dimensions=[{"Name": DIMENSION, "Value": stream}],
        Statistic=alarm.statistic,
        Period=alarm.period_s,
    )
    return spec


def alarm_definitions(alarms: Sequence[Alarm], stream: str, native: bool = False) -> list[dict[str, Any]]:
    """`alarm_definition` of each alarm."""
    return [alarm_definition(alarm, stream, native) for alarm in alarms]


def apply_alarms(
    cloudwatch: Any, alarms: Sequence[Alarm], stream: str, actions: Sequence[str] = (), native: bool = False
) -> list[str]:
    """Create or update (PutMetricAlarm is an upsert) each alarm for `stream`; returns their names.

    `actions` are ARNs notified on ALARM and OK (e.g. the alert SNS topic).
    """
    names = []
    for spec in alarm_definitions(alarms, stream, native):
        cloudwatch.put_metric_alarm(
            **spec, ActionsEnabled=bool(actions), AlarmActions=list(actions), OKActions=list(actions)
        )
        names.append(spec["AlarmName"])
    return names


@dataclass(frozen=True)
class AlarmState:
    """One alarm's evaluation at `now`: its state and the per-period values it was judged on."""

    alarm: Alarm
    stream: str
    state: str  # ALARM | OK | INSUFFICIENT_DATA
    period_start: datetime  # start of the newest evaluated period
    window_start: datetime
    values: tuple[float | None, ...]  # oldest first; None = no datapoint
    breaching: int
    reason: str = ""  # CloudWatch's StateReason, when CloudWatch evaluated the alarm

    @property
    def key(self) -> str:
        """Dedupe key: the alarm, the stream and the newest period it was evaluated on."""
        return f"{self.alarm.name}@{self.stream}@{self.period_start.isoformat()}"

    def message(self) -> str:
        if self.reason:
            return f"{self.alarm.name} {self.state} on stream {self.stream}: {self.reason}"
        shown = ", ".join("-" if v is None else f"{v:g}" for v in self.values)
        return (
            f"{self.alarm.name} {self.state} on stream {self.stream}: {self.alarm.condition()}; "
            f"{self.breaching} breaching, values [{shown}] from {self.window_start.isoformat()}"
        )


Breach = AlarmState  # a Breach is an AlarmState whose state is ALARM


def _floor(moment: datetime, seconds: int) -> datetime:
    epoch = int(moment.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, UTC)


def _period_stat(
    cloudwatch: Any, alarm: Alarm, metric: str, stat: str, stream: str, start: datetime, native: bool
) -> float | None:
    """`stat` of `metric` for exactly one period (one datapoint or none, however the server buckets)."""
    stats = ["Sum", "SampleCount"] if stat == "Average" else [stat]
    resp = cloudwatch.get_metric_statistics(
        Namespace=alarm.namespace_of(metric, native),
        MetricName=metric,
        Dimensions=[{"Name": DIMENSION, "Value": stream}],
        StartTime=start,
        EndTime=start + timedelta(seconds=alarm.period_s),
        Period=alarm.period_s,
        Statistics=stats,
    )
    return combine_datapoints(resp.get("Datapoints", []), stat)


def _period_value(cloudwatch: Any, alarm: Alarm, stream: str, start: datetime, native: bool) -> float | None:
    """The alarm's value for one period: its statistic, or for a stall alarm 1 (stalled) or 0."""
    if alarm.arriving:
        arriving = _period_stat(cloudwatch, alarm, alarm.arriving, "Sum", stream, start, native) or 0.0
        processed = _period_stat(cloudwatch, alarm, alarm.metric, "Sum", stream, start, native) or 0.0
        return 1.0 if arriving > 0 and processed <= 0 else 0.0
    return _period_stat(cloudwatch, alarm, alarm.metric, alarm.statistic, stream, start, native)


def evaluate_alarm(
    cloudwatch: Any,
    alarm: Alarm,
    stream: str,
    now: datetime,
    native: bool = False,
    since: datetime | None = None,
) -> AlarmState:
    """Evaluate one alarm over its last `evaluation_periods` complete periods before `now`; periods
    that began before `since` are left out (the silence before evaluation began is no evidence)."""
    end = _floor(now, alarm.period_s)
    step = timedelta(seconds=alarm.period_s)
    starts = [end - step * (alarm.evaluation_periods - i) for i in range(alarm.evaluation_periods)]
    counted = [since is None or start >= since for start in starts]
    values = tuple(
        _period_value(cloudwatch, alarm, stream, start, native) if ok else None
        for start, ok in zip(starts, counted, strict=True)
    )
    breaching = present = 0
    for value, ok in zip(values, counted, strict=True):
        if not ok:
            continue
        if value is None:
            if alarm.treat_missing_data == "breaching":
                breaching += 1
                present += 1
            elif alarm.treat_missing_data == "notBreaching":
                present += 1
            continue
        present += 1
        breaching += alarm.breaches(value)
    if present == 0:
        state = INSUFFICIENT
    else:
        state = ALARM if breaching >= alarm.datapoints_to_alarm else OK
    return AlarmState(
        alarm=alarm,
        stream=stream,
        state=state,
        period_start=starts[-1],
        window_start=starts[0],
        values=values,
        breaching=breaching,
    )


def read_states(cloudwatch: Any, alarms: Sequence[Alarm], stream: str) -> list[AlarmState]:
    """The states CloudWatch itself evaluated for `stream`'s alarms (the aws profile: CloudWatch, not
    the daemon, decides; this only reads). An alarm not created yet reads INSUFFICIENT_DATA; the
    dedupe key's period is CloudWatch's last state change."""
    by_name = {alarm_name(alarm, stream): alarm for alarm in alarms}
    found: dict[str, dict[str, Any]] = {}
    names = list(by_name)
    for start in range(0, len(names), 100):  # DescribeAlarms takes at most 100 names
        for page in cloudwatch.get_paginator("describe_alarms").paginate(
            AlarmNames=names[start : start + 100], AlarmTypes=["MetricAlarm"]
        ):
            found.update({a["AlarmName"]: a for a in page.get("MetricAlarms", [])})
    states = []
    for name, alarm in by_name.items():
        current = found.get(name, {})
        changed = current.get("StateUpdatedTimestamp") or datetime.fromtimestamp(0, UTC)
        states.append(
            AlarmState(
                alarm=alarm,
                stream=stream,
                state=current.get("StateValue", INSUFFICIENT),
                period_start=changed,
                window_start=changed,
                values=(),
                breaching=0,
                reason=current.get("StateReason", "alarm not created in CloudWatch"),
            )
        )
    return states


def evaluate_states(
    cloudwatch: Any,
    alarms: Sequence[Alarm],
    stream: str,
    now: datetime | None = None,
    native: bool = False,
    since: datetime | None = None,
) -> list[AlarmState]:
    """Every alarm's state at `now` (default: the current time)."""
    now = now or datetime.now(UTC)
    return [evaluate_alarm(cloudwatch, alarm, stream, now, native, since) for alarm in alarms]


def evaluate(
    cloudwatch: Any,
    alarms: Sequence[Alarm],
    stream: str,
    now: datetime | None = None,
    native: bool = False,
    since: datetime | None = None,
) -> list[Breach]:
    """The alarms in ALARM state at `now`."""
    return [s for s in evaluate_states(cloudwatch, alarms, stream, now, native, since) if s.state == ALARM]
