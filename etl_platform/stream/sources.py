"""Simulated data sources: the seed's five kinds, each with its native record shape, mapped to the envelope.

Used for demo traffic and tests. Each source keeps its own native fields in `attributes` and maps one
numeric field to `value` (a latency, a sensor reading, an order amount, ...). Values are normal per
(source, event_type) with rare spikes, so the anomaly detector has something to find; spiked events
carry `"_synthetic_spike": true` in their attributes as ground truth. Output is a pure function of
(source, n, seed, start): same arguments, same events, same ids.
"""

from __future__ import annotations

import heapq
import random
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from etl_platform.events import SOURCES
from etl_platform.pipelines.contract import Contract, FieldSpec

DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)
DEFAULT_USERS = 200
DEFAULT_SPIKE_RATE = 0.005
_ID_NAMESPACE = uuid.UUID("6f1c9a52-3f0e-4d1b-9a57-2f2f3c0e8b11")

# (event_type, value) plus native attributes, from an rng and a user index.
_Native = tuple[str, float, dict[str, Any]]


def _normal(rng: random.Random, mean: float, sd: float, spike: bool, floor: float = 0.0) -> float:
    """Normal draw, or a spike 8-15 standard deviations above the mean."""
    x = mean + sd * (rng.uniform(8.0, 15.0) if spike else rng.gauss(0.0, 1.0))
    return max(floor, x)


def _app_log(rng: random.Random, user: int, spike: bool, t: datetime) -> _Native:
    service = rng.choice(("checkout", "search", "auth", "catalog"))
    level = rng.choices(("INFO", "WARN", "ERROR"), weights=(85, 10, 5))[0]
    mean, sd = {"INFO": (120.0, 25.0), "WARN": (300.0, 60.0), "ERROR": (800.0, 150.0)}[level]
    latency = round(_normal(rng, mean, sd, spike, floor=1.0), 3)
    status = {"INFO": 200, "WARN": 429, "ERROR": 500}[level]
    return (
        f"log_{level.lower()}",
        latency,
        {
            "level": level,
            "logger": f"{service}.handler",
            "message": f"GET /api/{service} -> {status} in {latency:.0f} ms",
            "latency_ms": latency,
            "host": f"{service}-{rng.randrange(4)}",
        },
    )


_SENSORS = (
    ("temperature", 21.0, 1.5, "C"),
    ("humidity", 45.0, 5.0, "%"),
    ("pressure", 1013.0, 4.0, "hPa"),
    ("vibration", 0.3, 0.05, "g"),
)


def _iot(rng: random.Random, user: int, spike: bool, t: datetime) -> _Native:
    k = rng.randrange(len(_SENSORS))
    sensor, mean, sd, unit = _SENSORS[k]
    reading = round(_normal(rng, mean, sd, spike, floor=-1e9), 4)
    return (
        f"{sensor}_reading",
        reading,
        {
            "device_id": f"dev-{user:04d}-{k}",
            "sensor": sensor,
            "reading": reading,
            "unit": unit,
            "firmware": ("1.4.2", "1.5.0", "2.0.1")[(user + k) % 3],
            "battery_pct": rng.randint(5, 100),
        },
    )


def _cdc(rng: random.Random, user: int, spike: bool, t: datetime) -> _Native:
    op = rng.choices(("c", "u", "d"), weights=(60, 30, 10))[0]
    order_id = rng.randrange(1, 10_000_000)
    amount = round(_normal(rng, 60.0, 15.0, spike, floor=0.5), 2)
    row = {
        "order_id": order_id,
        "customer": f"user-{user:04d}",
        "amount": amount,
        "currency": "USD",
        "status": "paid" if op != "c" else "new",
    }
    before = None if op == "c" else {**row, "status": "new"}
    after = None if op == "d" else row
    return (
        "order_" + {"c": "created", "u": "updated", "d": "deleted"}[op],
        amount,
        {
            "op": op,
            "ts_ms": int(t.timestamp() * 1000),
            "source": {
                "connector": "postgresql",
                "db": "shop",
                "schema": "public",
                "table": "orders",
                "lsn": rng.getrandbits(40),
            },
            "before": before,
            "after": after,
        },
    )


_ENDPOINTS = (
    ("payments", "/v1/charges", "POST", 180.0, 40.0),
    ("geo", "/v2/geocode", "GET", 90.0, 20.0),
    ("weather", "/v1/forecast", "GET", 250.0, 50.0),
)


def _api(rng: random.Random, user: int, spike: bool, t: datetime) -> _Native:
    provider, endpoint, method, mean, sd = rng.choice(_ENDPOINTS)
    response_ms = round(_normal(rng, mean, sd, spike, floor=1.0), 3)
    status = rng.choices((200, 201, 429, 500, 503), weights=(90, 4, 3, 2, 1))[0]
    return (
        "api_call",
        response_ms,
        {
            "provider": provider,
            "endpoint": endpoint,
            "method": method,
            "status_code": status,
            "response_ms": response_ms,
        },
    )


_PAGES = ("/", "/search", "/product", "/cart", "/checkout", "/account")


def _web(rng: random.Random, user: int, spike: bool, t: datetime) -> _Native:
    action = rng.choices(("page_view", "click"), weights=(70, 30))[0]
    mean, sd = (30.0, 8.0) if action == "page_view" else (2.5, 0.6)
    seconds = _normal(rng, mean, sd, spike, floor=0.05)
    duration_ms = int(seconds * 1000)
    return (
        action,
        duration_ms / 1000.0,
        {
            "session_id": f"s-{user:04d}-{int(t.timestamp()) // 1800}",
            "page": rng.choice(_PAGES),
            "action": action,
            "duration_ms": duration_ms,
            "referrer": rng.choice(("", "google", "newsletter", "direct")),
            "user_agent": rng.choice(("Mozilla/5.0 (X11)", "Mozilla/5.0 (iPhone)", "Mozilla/5.0 (Windows)")),
        },
    )


_NATIVE: dict[str, Callable[[random.Random, int, bool, datetime], _Native]] = {
    "app_log": _app_log,
    "iot": _iot,
    "cdc": _cdc,
    "api": _api,
    "web": _web,
}
# Mean seconds between events per source, so a mix looks like real traffic rather than lockstep.
_MEAN_GAP_S = {"app_log": 0.05, "iot": 0.1, "cdc": 0.4, "api": 0.2, "web": 0.1}


def iso_utc(t: datetime) -> str:
    """Fixed-width ISO-8601 UTC with 'Z': string order equals time order."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check(source: str, n: int, start: datetime, users: int) -> None:
    """Fail at the call, not at the first `next()`, so a typo surfaces where it was made."""
    if source not in _NATIVE:
        raise ValueError(f"unknown source {source!r}; expected one of {', '.join(sorted(SOURCES))}")
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    if n < 0 or users < 1:
        raise ValueError(f"n must be >= 0 and users >= 1, got n={n} users={users}")


def _timed(
    source: str, n: int, seed: int, start: datetime, users: int, spike_rate: float
) -> Iterator[tuple[str, dict[str, Any]]]:
    rng = random.Random(f"{source}:{seed}")
    t = start.astimezone(UTC)
    for i in range(n):
        t += timedelta(microseconds=round(rng.expovariate(1.0 / _MEAN_GAP_S[source]) * 1e6))
        user = rng.randrange(users)
        spike = rng.random() < spike_rate
        event_type, value, attrs = _NATIVE[source](rng, user, spike, t)
        if spike:
            attrs["_synthetic_spike"] = True
        when = iso_utc(t)
        yield (
            when,
            {
                "event_id": str(uuid.uuid5(_ID_NAMESPACE, f"{source}|{seed}|{start.isoformat()}|{i}")),
                "source": source,
                "user_id": f"user-{user:04d}",
                "event_type": event_type,
                "event_time": when,
                "value": value,
                "attributes": attrs,
            },
        )


def generate(
    source: str,
    n: int,
    seed: int = 0,
    start: datetime = DEFAULT_START,
    *,
    users: int = DEFAULT_USERS,
    spike_rate: float = DEFAULT_SPIKE_RATE,
) -> Iterator[dict[str, Any]]:
    """`n` JSON-ready envelopes from one source, in event-time order, deterministic in `seed`."""
    _check(source, n, start, users)
    return (event for _, event in _timed(source, n, seed, start, users, spike_rate))


def demo_mix(
    n: int,
    seed: int = 0,
    start: datetime = DEFAULT_START,
    *,
    sources: tuple[str, ...] = ("app_log", "iot", "cdc", "api", "web"),
    users: int = DEFAULT_USERS,
    spike_rate: float = DEFAULT_SPIKE_RATE,
) -> Iterator[dict[str, Any]]:
    """`n` envelopes from all `sources`, interleaved in event-time order (each at its own rate)."""
    for s in sources:
        _check(s, n, start, users)
    streams = [_timed(s, n, seed, start, users, spike_rate) for s in sources]
    merged = heapq.merge(*streams, key=lambda pair: pair[0])
    return (event for _, (_when, event) in zip(range(n), merged, strict=False))


# --- records of any pipeline's contract -------------------------------------------------------------
_EVENT_TYPES = ("click", "view", "purchase", "signup")


def contract_records(
    contract: Contract,
    n: int,
    seed: int = 0,
    start: datetime = DEFAULT_START,
    *,
    users: int = DEFAULT_USERS,
    spike_rate: float = DEFAULT_SPIKE_RATE,
) -> Iterator[dict[str, Any]]:
    """`n` JSON-ready records shaped as `contract` declares (demo traffic for a pipeline of your own):
    the first key field is a user among `users`, other keys one of a few types, the value normal per
    key with rare spikes (`"_synthetic_spike": true` beside them, kept in attributes), every other
    field a plausible value of its type; ids as uuid5 when the contract has an id field."""
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    rng = random.Random(f"contract:{seed}")
    t = start.astimezone(UTC)
    for i in range(n):
        t += timedelta(microseconds=round(rng.expovariate(10.0) * 1e6))
        user = rng.randrange(users)
        spike = rng.random() < spike_rate
        record: dict[str, Any] = {}
        for spec in contract.fields:
            if spec.name == contract.value:
                mean = 50.0 + 10 * (user % 7)
                value = _normal(rng, mean, mean / 10, spike, floor=-1e9)
                record[spec.name] = round(value) if spec.type == "int" else round(value, 4)
            elif spec.name == contract.event_id:
                record[spec.name] = str(uuid.uuid5(_ID_NAMESPACE, f"contract|{seed}|{start.isoformat()}|{i}"))
            elif spec.name == contract.attributes:
                record[spec.name] = {"demo": True}
            elif spec.name in contract.keys and spec.name == contract.keys[0]:
                record[spec.name] = user if spec.type == "int" else f"user-{user:04d}"
            elif not spec.required and rng.random() < 0.2:
                continue  # optional fields are sometimes absent
            else:
                record[spec.name] = _field_value(rng, spec, t, is_key=spec.name in contract.keys)
        if spike:
            record["_synthetic_spike"] = True
        yield record


def _field_value(rng: random.Random, spec: FieldSpec, t: datetime, is_key: bool) -> Any:
    if spec.type == "timestamp":
        return iso_utc(t)
    if spec.type == "string":
        if spec.values:
            return rng.choice(spec.values)
        text = rng.choice(_EVENT_TYPES) if is_key else f"{spec.name}-{rng.randrange(10)}"
        return text[: spec.max_length] if spec.max_length else text
    if spec.type in ("float", "int"):
        low = spec.minimum if spec.minimum is not None else 0.0
        high = spec.maximum if spec.maximum is not None else low + 100.0
        number = rng.uniform(low, high)
        return int(number) if spec.type == "int" else round(number, 3)
    if spec.type == "bool":
        return rng.random() < 0.5
    return {"n": rng.randrange(100)}  # json
