"""Shard auto-scaling: the seed's `scale_kinesis_stream`, made safe to run unattended every 5 minutes.

`decide` is a pure policy. Required shards = ceil(max(records/s / (1000 x u), bytes/s / (1 MiB x u)))
for target utilization u: the per-shard write limits are 1,000 records/s *and* 1 MiB/s, and a stream
of large records is bound by bytes long before records (the seed's formula only looked at records).
It then applies the limits AWS puts on `UpdateShardCount` and the ones a scaler needs to not flap:

- one call may at most double or halve the open shard count (larger moves take several calls);
- the result stays within [min_shards, max_shards];
- no change within `cooldown_s` of the previous scaling (default 15 min), so a reshard's effect is
  measured before the next one;
- at most `max_scalings_per_day` (AWS: 10) scalings in any rolling 24 hours;
- no change while the stream is not ACTIVE (a reshard is still running);
- scale-out follows the last `window_minutes` (5); scale-in only to a count that would run at or below
  target - `scale_in_headroom` (0.1) under the busiest window of the last `scale_in_window_minutes`
  (30): a load hovering at the target does not flap n -> n+1 -> n, and a paused burst keeps its shards;
- scale-in may not use the last `scale_out_reserve` (2) of the daily scalings, so a day of
  shrinking never leaves the stream unable to grow;
- no data in the window holds the current count by default (`missing_data="hold"`): silence may be a
  broken metrics path as easily as an idle stream. `missing_data="zero"` treats it as idle.

Every decision carries a reason string that says which rule decided it.
`scale_stream` wires the policy to CloudWatch (inputs), Kinesis (apply) and the lake (history).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from etl_platform.config import ConfigError, env_number
from etl_platform.ops.metrics import INCOMING_BYTES, INCOMING_RECORDS, metric_namespace, period_values, statistic

SHARD_RECORDS_PER_S = 1000
SHARD_BYTES_PER_S = 1024 * 1024
AWS_MAX_SCALINGS_PER_DAY = 10
SCALE_OUT, SCALE_IN, NONE = "scale_out", "scale_in", "none"
MISSING_DATA = ("hold", "zero")
HISTORY_PREFIX = "_scaling"
DAY = timedelta(hours=24)


@dataclass(frozen=True)
class ScalingPolicy:
    target_utilization: float = 0.7
    min_shards: int = 1
    max_shards: int = 64
    cooldown_s: float = 900.0
    max_scalings_per_day: int = AWS_MAX_SCALINGS_PER_DAY
    window_minutes: int = 5
    missing_data: str = "hold"
    scale_in_headroom: float = 0.1  # scale in only to a count that runs at <= target - headroom
    scale_in_window_minutes: int = 30  # ... under the peak window of this long a look-back
    scale_out_reserve: int = 2  # daily scalings scale-in may not use, kept for load that comes back

    def __post_init__(self) -> None:
        if not 0 < self.target_utilization <= 1:
            raise ConfigError(f"target_utilization={self.target_utilization} must be in (0, 1]")
        if self.min_shards < 1:
            raise ConfigError(f"min_shards={self.min_shards} must be at least 1")
        if self.max_shards < self.min_shards:
            raise ConfigError(f"max_shards={self.max_shards} is below min_shards={self.min_shards}")
        if self.cooldown_s < 0:
            raise ConfigError(f"cooldown_s={self.cooldown_s} must not be negative")
        if not 1 <= self.max_scalings_per_day <= AWS_MAX_SCALINGS_PER_DAY:
            raise ConfigError(
                f"max_scalings_per_day={self.max_scalings_per_day} must be 1-{AWS_MAX_SCALINGS_PER_DAY} "
                "(UpdateShardCount's rolling 24 h limit)"
            )
        if not 0 <= self.scale_in_headroom < self.target_utilization:
            raise ConfigError(f"scale_in_headroom={self.scale_in_headroom} must be in [0, target_utilization)")
        if self.window_minutes < 1:
            raise ConfigError(f"window_minutes={self.window_minutes} must be at least 1")
        if self.scale_in_window_minutes < self.window_minutes:
            raise ConfigError(
                f"scale_in_window_minutes={self.scale_in_window_minutes} must be at least "
                f"window_minutes={self.window_minutes}"
            )
        if not 0 <= self.scale_out_reserve < self.max_scalings_per_day:
            raise ConfigError(f"scale_out_reserve={self.scale_out_reserve} must be in [0, max_scalings_per_day)")
        if self.missing_data not in MISSING_DATA:
            raise ConfigError(f"missing_data={self.missing_data!r} must be one of {', '.join(MISSING_DATA)}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ScalingPolicy:
        """ETL_SCALING_* variables (TARGET_UTILIZATION, MIN_SHARDS, MAX_SHARDS, COOLDOWN_S,
        MAX_PER_DAY, WINDOW_MINUTES, MISSING_DATA, SCALE_IN_HEADROOM, SCALE_IN_WINDOW_MINUTES, SCALE_OUT_RESERVE),
        then explicit non-None overrides."""
        env = os.environ if env is None else env
        spec = {
            "target_utilization": ("ETL_SCALING_TARGET_UTILIZATION", float),
            "min_shards": ("ETL_SCALING_MIN_SHARDS", int),
            "max_shards": ("ETL_SCALING_MAX_SHARDS", int),
            "cooldown_s": ("ETL_SCALING_COOLDOWN_S", float),
            "max_scalings_per_day": ("ETL_SCALING_MAX_PER_DAY", int),
            "window_minutes": ("ETL_SCALING_WINDOW_MINUTES", int),
            "missing_data": ("ETL_SCALING_MISSING_DATA", str),
            "scale_in_headroom": ("ETL_SCALING_SCALE_IN_HEADROOM", float),
            "scale_in_window_minutes": ("ETL_SCALING_SCALE_IN_WINDOW_MINUTES", int),
            "scale_out_reserve": ("ETL_SCALING_SCALE_OUT_RESERVE", int),
        }
        values: dict[str, Any] = {}
        for name, (var, kind) in spec.items():
            if env.get(var) in (None, ""):
                continue
            # Parsed here; ranges are checked (with the field's name) by __post_init__.
            values[name] = env[var] if kind is str else env_number(env, var, None, kind, float("-inf"))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass(frozen=True)
class ScalingDecision:
    current_shards: int
    target_shards: int
    action: str  # scale_out | scale_in | none
    reason: str
    required_shards: int | None = None  # what the load needs at the target utilization (None: no data)
    records_per_s: float | None = None
    bytes_per_s: float | None = None
    bound: str | None = None  # "records" | "bytes": which write limit sets `required_shards`

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def required_shards(records_per_s: float, bytes_per_s: float, target_utilization: float) -> tuple[int, str]:
    """Shards needed to keep both write limits at or below the target utilization, and which limit binds."""
    by_records = records_per_s / (SHARD_RECORDS_PER_S * target_utilization)
    by_bytes = bytes_per_s / (SHARD_BYTES_PER_S * target_utilization)
    # Round away float noise (e.g. 2100 / 700 = 3.0000000000000004) before the ceiling.
    need = max(1, math.ceil(round(max(by_records, by_bytes), 9)))
    return need, "bytes" if by_bytes > by_records else "records"


def _utilization(records_per_s: float, bytes_per_s: float, shards: int) -> str:
    rec = 100 * records_per_s / (SHARD_RECORDS_PER_S * shards)
    mib = bytes_per_s / SHARD_BYTES_PER_S
    byt = 100 * mib / shards
    return (
        f"{records_per_s:,.0f} records/s ({rec:.0f}% of {shards} shards' record limit) and {mib:.2f} MiB/s "
        f"({byt:.0f}% of their byte limit)"
    )


def decide(
    current_shards: int,
    records_per_s: float | None,
    bytes_per_s: float | None,
    now: datetime,
    history: Sequence[datetime] = (),
    policy: ScalingPolicy | None = None,
    stream_status: str = "ACTIVE",
    peak_records_per_s: float | None = None,
    peak_bytes_per_s: float | None = None,
) -> ScalingDecision:
    """The scaling decision for one observation window (see the module docstring for the rules).

    `records_per_s`/`bytes_per_s` are the load over the last `window_minutes`; `peak_*` the highest
    window's load over the last `scale_in_window_minutes` (None: same as the current window). Scale-out
    follows the current window; scale-in must also fit the peak, so a burst that just paused does not
    shed shards it will need again in minutes.
    """
    policy = policy or ScalingPolicy()
    if current_shards < 1:
        raise ValueError(f"current_shards={current_shards} must be at least 1")

    def hold(reason: str, **kw: Any) -> ScalingDecision:
        return ScalingDecision(current_shards, current_shards, NONE, reason, **kw)

    if stream_status != "ACTIVE":
        return hold(f"stream is {stream_status}: a previous reshard is still in progress")
    if records_per_s is None and bytes_per_s is None:
        if policy.missing_data == "hold":
            return hold(
                f"no {INCOMING_RECORDS}/{INCOMING_BYTES} datapoints in the last {policy.window_minutes} min: "
                "holding (missing_data=hold; set zero to treat silence as idle)"
            )
        records_per_s = bytes_per_s = 0.0
    records, size = records_per_s or 0.0, bytes_per_s or 0.0
    need, bound = required_shards(records, size, policy.target_utilization)
    seen = {"required_shards": need, "records_per_s": records, "bytes_per_s": size, "bound": bound}
    load = _utilization(records, size, current_shards)
    desired = min(policy.max_shards, max(policy.min_shards, need))
    need_text = (
        f"{load} need {need} shard{'s' if need != 1 else ''} at {policy.target_utilization:.0%} target "
        f"utilization ({bound}-bound)"
    )
    if desired != need:
        need_text += f"; clamped to {desired} by {'max' if need > desired else 'min'}_shards"
    if desired == current_shards:
        return hold(f"at target: {need_text}", **seen)

    scale_out = desired > current_shards
    if not scale_out:
        # Scale in only to a count that runs at <= target - headroom under the recent peak too:
        # hysteresis against a load hovering at the target, and patience with bursty load.
        floor_util = policy.target_utilization - policy.scale_in_headroom
        peak_records = max(records, peak_records_per_s or 0.0)
        peak_bytes = max(size, peak_bytes_per_s or 0.0)
        need_in, _ = required_shards(peak_records, peak_bytes, floor_util)
        desired = min(policy.max_shards, max(policy.min_shards, need_in))
        peaked = peak_records > records or peak_bytes > size
        basis = (
            f"the {policy.scale_in_window_minutes} min peak ({peak_records:,.0f} records/s, "
            f"{peak_bytes / SHARD_BYTES_PER_S:.2f} MiB/s)"
            if peaked
            else "it"
        )
        if desired >= current_shards:
            return hold(
                f"scale-in held: {need_text}, but {basis} needs {need_in} to run at <= {floor_util:.0%} "
                f"(target - scale_in_headroom); keeping {current_shards}",
                **seen,
            )
        need_text += f"; {desired} keep {basis} at <= {floor_util:.0%}"

    recent = sorted(t for t in history if timedelta(0) <= now - t < DAY)
    if recent and (now - recent[-1]).total_seconds() < policy.cooldown_s:
        ready = recent[-1] + timedelta(seconds=policy.cooldown_s)
        return hold(
            f"cool-down: would scale to {desired} ({need_text}), but the last scaling was at "
            f"{recent[-1].isoformat()}, {(now - recent[-1]).total_seconds() / 60:.0f} min ago "
            f"(cool-down {policy.cooldown_s / 60:.0f} min, until {ready.isoformat()})",
            **seen,
        )
    if len(recent) >= policy.max_scalings_per_day:
        ready = recent[-policy.max_scalings_per_day] + DAY
        return hold(
            f"daily cap: would scale to {desired} ({need_text}), but {len(recent)} scalings in the last "
            f"24 h reached the limit of {policy.max_scalings_per_day} (UpdateShardCount allows "
            f"{AWS_MAX_SCALINGS_PER_DAY} per rolling 24 h); next allowed at {ready.isoformat()}",
            **seen,
        )
    budget_for_in = policy.max_scalings_per_day - policy.scale_out_reserve
    if not scale_out and len(recent) >= budget_for_in:
        ready = recent[-budget_for_in] + DAY
        return hold(
            f"scale-in budget: would scale to {desired} ({need_text}), but {len(recent)} of the "
            f"{policy.max_scalings_per_day} scalings per 24 h are used and the last "
            f"{policy.scale_out_reserve} are kept for scale-out; scale-in allowed again at "
            f"{ready.isoformat()}",
            **seen,
        )

    if scale_out:
        target = min(desired, 2 * current_shards)
        action = SCALE_OUT
        cap = "at most doubling per call (UpdateShardCount)"
    else:
        target = max(desired, math.ceil(current_shards / 2))
        action = SCALE_IN
        cap = "at most halving per call (UpdateShardCount)"
    reason = f"{action} {current_shards} -> {target}: {need_text}"
    if target != desired:
        reason += f"; capped at {target} by {cap}, the rest on a later call"
    return ScalingDecision(current_shards, target, action, reason, **seen)


# --- observing and applying -----------------------------------------------------------------------
@dataclass(frozen=True)
class Observation:
    """What `decide` is fed, read from Kinesis (shards, status) and CloudWatch (load over the window)."""

    stream: str
    open_shards: int
    stream_status: str
    window_start: datetime
    window_end: datetime
    incoming_records: float | None  # Sum over the window
    incoming_bytes: float | None
    peak_records_per_s: float | None = None  # busiest window of the scale-in look-back
    peak_bytes_per_s: float | None = None

    @property
    def window_s(self) -> float:
        return (self.window_end - self.window_start).total_seconds()

    @property
    def records_per_s(self) -> float | None:
        return None if self.incoming_records is None else self.incoming_records / self.window_s

    @property
    def bytes_per_s(self) -> float | None:
        return None if self.incoming_bytes is None else self.incoming_bytes / self.window_s

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "records_per_s": self.records_per_s,
            "bytes_per_s": self.bytes_per_s,
        }


def open_shard_count(kinesis: Any, stream: str) -> tuple[int, str]:
    """(open shards, stream status): the seed counted every listed shard, closed parents included."""
    summary = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
    count = summary.get("OpenShardCount")
    if count is None:
        from etl_platform.stream.shards import list_shards

        count = sum(1 for s in list_shards(kinesis, stream) if not s.closed)
    return int(count), summary["StreamStatus"]


def observe(
    kinesis: Any,
    cloudwatch: Any,
    stream: str,
    now: datetime,
    window_minutes: int = 5,
    native: bool = False,
    peak_minutes: int | None = None,
) -> Observation:
    """Current shards, the stream's IncomingRecords/IncomingBytes sums over the last window, and the
    busiest window's rates over the last `peak_minutes` (the scale-in look-back). `native`: read them
    from AWS/Kinesis, which counts every producer's writes, not only ours."""
    shards, status = open_shard_count(kinesis, stream)
    start = now - timedelta(minutes=window_minutes)
    window_s = window_minutes * 60
    peaks: dict[str, float | None] = {INCOMING_RECORDS: None, INCOMING_BYTES: None}
    if peak_minutes:
        for name in peaks:
            sums = period_values(
                cloudwatch,
                name,
                stream,
                now - timedelta(minutes=peak_minutes),
                now,
                window_s,
                "Sum",
                metric_namespace(name, native),
            )
            peaks[name] = max(sums) / window_s if sums else None
    return Observation(
        stream=stream,
        open_shards=shards,
        stream_status=status,
        window_start=start,
        window_end=now,
        incoming_records=statistic(
            cloudwatch, INCOMING_RECORDS, stream, start, now, "Sum", metric_namespace(INCOMING_RECORDS, native)
        ),
        incoming_bytes=statistic(
            cloudwatch, INCOMING_BYTES, stream, start, now, "Sum", metric_namespace(INCOMING_BYTES, native)
        ),
        peak_records_per_s=peaks[INCOMING_RECORDS],
        peak_bytes_per_s=peaks[INCOMING_BYTES],
    )


class ScalingError(RuntimeError):
    """UpdateShardCount was refused or the stream did not become ACTIVE again in time."""


def wait_active(kinesis: Any, stream: str, timeout_s: float) -> str:
    """Poll until the stream is ACTIVE (or the timeout passes); returns the last status seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamStatus"]
        if status == "ACTIVE" or time.monotonic() >= deadline:
            return status
        time.sleep(0.2)


def apply_decision(kinesis: Any, stream: str, decision: ScalingDecision, wait_s: float = 0.0) -> dict | None:
    """Call UpdateShardCount (UNIFORM_SCALING) for a scale_out/scale_in decision; None for `none`.

    With `wait_s` > 0, waits up to that long for the stream to be ACTIVE again (AWS takes seconds to
    minutes; the next scheduled tick sees UPDATING and holds if it is not).
    """
    if decision.action == NONE:
        return None
    from botocore.exceptions import ClientError

    try:
        response = kinesis.update_shard_count(
            StreamName=stream,
            TargetShardCount=decision.target_shards,
            ScalingType="UNIFORM_SCALING",
        )
    except ClientError as exc:
        raise ScalingError(
            f"UpdateShardCount {stream} {decision.current_shards} -> {decision.target_shards} refused: {exc}"
        ) from exc
    if wait_s > 0:
        wait_active(kinesis, stream, wait_s)
    return response


# --- history --------------------------------------------------------------------------------------
class ScalingHistory:
    """Past scalings of one stream, in the lake (`_scaling/<stream>/history.json`).

    Kept outside Dagster so the cool-down and daily cap hold across the schedule, the CLI and a reset
    instance alike. Only the last 24 h matter to the policy; the newest 100 entries are kept.
    """

    KEEP = 100

    def __init__(self, s3: Any, bucket: str, stream: str) -> None:
        self.s3, self.bucket, self.key = s3, bucket, f"{HISTORY_PREFIX}/{stream}/history.json"

    def entries(self) -> list[dict[str, Any]]:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self.key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return []
        return json.loads(body)["scalings"]

    def timestamps(self) -> list[datetime]:
        return [datetime.fromisoformat(e["at"]) for e in self.entries()]

    def record(self, decision: ScalingDecision, at: datetime) -> None:
        entries = self.entries() + [
            {
                "at": at.isoformat(),
                "from": decision.current_shards,
                "to": decision.target_shards,
                "reason": decision.reason,
            }
        ]
        body = json.dumps({"scalings": entries[-self.KEEP :]}, indent=1).encode()
        self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=body, ContentType="application/json")


@dataclass
class ScalingReport:
    """One scaler pass: inputs, decision, and whether it was applied."""

    observation: Observation
    policy: ScalingPolicy
    decision: ScalingDecision
    dry_run: bool
    applied: bool = False
    history: list[str] = field(default_factory=list)  # scalings in the last 24 h, ISO timestamps

    def as_dict(self) -> dict[str, Any]:
        return {
            "stream": self.observation.stream,
            "dry_run": self.dry_run,
            "applied": self.applied,
            "inputs": {**self.observation.as_dict(), "policy": asdict(self.policy), "scalings_last_24h": self.history},
            "decision": self.decision.as_dict(),
        }


def scale_stream(
    kinesis: Any,
    cloudwatch: Any,
    history: ScalingHistory,
    stream: str,
    policy: ScalingPolicy | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
    wait_s: float = 0.0,
    native: bool = False,
) -> ScalingReport:
    """Observe, decide and (unless `dry_run`) apply and record: what the schedule and the CLI run."""
    policy = policy or ScalingPolicy()
    now = now or datetime.now(UTC)
    obs = observe(kinesis, cloudwatch, stream, now, policy.window_minutes, native, policy.scale_in_window_minutes)
    past = [t for t in history.timestamps() if timedelta(0) <= now - t < DAY]
    decision = decide(
        obs.open_shards,
        obs.records_per_s,
        obs.bytes_per_s,
        now,
        past,
        policy,
        obs.stream_status,
        obs.peak_records_per_s,
        obs.peak_bytes_per_s,
    )
    report = ScalingReport(obs, policy, decision, dry_run, history=[t.isoformat() for t in sorted(past)])
    if decision.action != NONE and not dry_run:
        apply_decision(kinesis, stream, decision)
        history.record(decision, now)  # recorded once AWS accepted it, before waiting for ACTIVE
        report.applied = True
        if wait_s > 0:
            wait_active(kinesis, stream, wait_s)
    return report


# --- replaying a recorded load series -------------------------------------------------------------
def replay(series: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The decision sequence for a recorded load series, as if the schedule ran at each sample.

    `series`: {"start": ISO time, "interval_minutes": 5, "initial_shards": n, "policy": {...},
    "samples": [{"records_per_s": r, "bytes_per_s": b, "note": "..."} | null, ...]} (null = no data).
    `overrides` (non-None values) replace fields of the series' policy. Each scaling takes effect
    before the next sample (kinesis-mock and most real reshards are faster than the 5 min schedule).
    """
    try:
        start = datetime.fromisoformat(str(series["start"]).replace("Z", "+00:00"))
        step = timedelta(minutes=float(series.get("interval_minutes", 5)))
        shards = int(series["initial_shards"])
        samples = list(series["samples"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"load series: missing or invalid field: {exc}") from None
    fields = {**series.get("policy", {}), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    try:
        policy = ScalingPolicy(**fields)
    except TypeError as exc:
        raise ConfigError(f"load series policy: {exc}") from None
    history: list[datetime] = []
    steps = []
    look_back = max(1, round(policy.scale_in_window_minutes / (step.total_seconds() / 60)))
    for index, sample in enumerate(samples):
        now = start + step * index
        records = None if sample is None else float(sample.get("records_per_s", 0.0))
        size = None if sample is None else float(sample.get("bytes_per_s", 0.0))
        window = [s for s in samples[max(0, index - look_back + 1) : index + 1] if s is not None]
        peak_records = max((float(s.get("records_per_s", 0.0)) for s in window), default=None)
        peak_bytes = max((float(s.get("bytes_per_s", 0.0)) for s in window), default=None)
        decision = decide(shards, records, size, now, history, policy, "ACTIVE", peak_records, peak_bytes)
        steps.append({"at": now.isoformat(), "note": (sample or {}).get("note", ""), **decision.as_dict()})
        if decision.action != NONE:
            history.append(now)
            shards = decision.target_shards
    return steps
