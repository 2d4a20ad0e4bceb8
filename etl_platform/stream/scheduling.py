"""Supervising shard workers: which shards need a worker now, without Dagster and without I/O.

Each tick the caller gathers the stream's leases and, per shard, the runs that may be its worker, and
asks `supervise`. Every readable shard (a child only after its parents finished) must have a live
worker:

- a lease held and not expired: its worker is alive; nothing to do, unless the owner hands the lease
  over (its budget ends) within `handover_lead_s` and no other run of the shard is in flight: then a
  successor is launched ahead of time, so that it has started and waits for the lease when the owner
  releases it (the run-queue allows two runs per shard for this; the lease still admits one owner);
- a run of the shard queued or starting (it has not taken the lease yet), or started within
  `start_grace_s`: wait for it;
- a started run that released the lease within `finish_grace_s` is ending: wait for it;
- a started run whose lease expired (its process died: kill -9, a lost task) holds the shard's
  run-queue slot forever: it is reported as dead, so the caller can mark it failed, and a new worker
  is launched;
- otherwise (a released lease, a lease expired with no run, a run that ended for whatever reason):
  launch a worker.

Nothing is keyed on a run key or a position, so no cancelled run, failed run or run without progress
can keep a shard from getting a worker again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from etl_platform.stream.leases import Lease, readable

START_GRACE_S = 120.0  # a started run takes the lease within this long (process start + code location load)
FINISH_GRACE_S = 60.0  # a run that released its lease ends within this long


@dataclass(frozen=True)
class WorkerRun:
    """A run of a shard's worker job, as far as supervision cares."""

    run_id: str
    status: str  # "queued" | "starting" | "started"
    started_at: float | None = None  # epoch seconds, when the run started


@dataclass(frozen=True)
class Plan:
    launch: list[str] = field(default_factory=list)  # shard ids that get a new worker, in lineage order
    dead_runs: dict[str, str] = field(default_factory=dict)  # run id -> why it is presumed dead
    waiting: dict[str, str] = field(default_factory=dict)  # shard id -> what it waits for


def owner_run_id(owner: str | None) -> str | None:
    """The Dagster run id of a lease owner named `run:<run id>` (the worker job's owners)."""
    return owner.removeprefix("run:") if owner and owner.startswith("run:") else None


def supervise(
    leases: Mapping[str, Lease],
    runs: Mapping[str, Sequence[WorkerRun]],
    now: float,
    start_grace_s: float = START_GRACE_S,
    finish_grace_s: float = FINISH_GRACE_S,
    handover_lead_s: float = 0.0,
) -> Plan:
    """The workers to launch now and the runs to declare dead (`runs`: the in-flight runs per shard)."""
    plan = Plan()
    # Runs holding some lease are alive: one that did not get this shard (it was leased elsewhere when
    # the run started) neither serves it nor is dead.
    alive_elsewhere = {owner_run_id(lease.owner) for lease in leases.values() if lease.held(now)}
    for lease in readable(leases):
        sid = lease.shard_id
        if lease.held(now):
            if lease.handover_at is not None and lease.handover_at - now <= handover_lead_s:
                owner = owner_run_id(lease.owner)
                others = [run.run_id for run in runs.get(sid, ()) if run.run_id != owner]
                if others:
                    plan.waiting[sid] = f"successor {others[0]} waits for the handover"
                else:
                    plan.launch.append(sid)
            continue
        alive = []
        for run in runs.get(sid, ()):
            if run.run_id in alive_elsewhere and owner_run_id(lease.owner) != run.run_id:
                continue
            if run.status != "started":
                alive.append(f"run {run.run_id} is {run.status}")
            elif owner_run_id(lease.owner) == run.run_id:
                plan.dead_runs[run.run_id] = f"its lease on {sid} expired at {lease.expires_at:.0f} without renewal"
            elif owner_run_id(lease.released_by) == run.run_id and now - lease.expires_at < finish_grace_s:
                alive.append(f"run {run.run_id} released the lease {now - lease.expires_at:.0f}s ago and is ending")
            elif run.started_at is not None and now - run.started_at < start_grace_s:
                alive.append(f"run {run.run_id} started {now - run.started_at:.0f}s ago")
            else:
                plan.dead_runs[run.run_id] = f"started over {start_grace_s:.0f}s ago and never took the lease on {sid}"
        if alive:
            plan.waiting[sid] = "; ".join(alive)
        else:
            plan.launch.append(sid)
    return plan
