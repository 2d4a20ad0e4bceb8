"""The supervisor's decision "which shards need a worker", as a pure function: no servers, no Dagster."""

from __future__ import annotations

from etl_platform.stream.leases import Lease
from etl_platform.stream.scheduling import FINISH_GRACE_S, START_GRACE_S, WorkerRun, supervise

NOW = 1_000_000.0


def lease(sid: str, *parents: str, owner: str | None = None, expires: float = 0.0, **fields) -> Lease:
    return Lease("s", sid, owner=owner, expires_at=expires, parents=tuple(parents), **fields)


def table(*leases: Lease) -> dict[str, Lease]:
    return {item.shard_id: item for item in leases}


def test_every_free_readable_shard_gets_a_worker_in_lineage_order():
    plan = supervise(table(lease("b"), lease("a")), {}, NOW)
    assert plan.launch == ["a", "b"] and not plan.dead_runs


def test_a_held_lease_means_a_live_worker():
    plan = supervise(table(lease("a", owner="run:1", expires=NOW + 5)), {}, NOW)
    assert plan.launch == []


def test_children_wait_for_their_parents_and_finished_shards_get_nothing():
    leases = table(lease("p", finished=True), lease("c1", "p", depth=1), lease("q"), lease("c2", "q", depth=1))
    assert supervise(leases, {}, NOW).launch == ["q", "c1"]  # c2 waits for q


def test_a_queued_or_starting_run_is_waited_for():
    for status in ("queued", "starting"):
        plan = supervise(table(lease("a")), {"a": [WorkerRun("r1", status)]}, NOW)
        assert plan.launch == [] and "r1" in plan.waiting["a"]


def test_a_started_run_gets_a_grace_period_to_take_the_lease():
    young = {"a": [WorkerRun("r1", "started", NOW - START_GRACE_S / 2)]}
    assert supervise(table(lease("a")), young, NOW).launch == []
    old = {"a": [WorkerRun("r1", "started", NOW - START_GRACE_S - 1)]}
    plan = supervise(table(lease("a")), old, NOW)
    assert plan.launch == ["a"] and "never took the lease" in plan.dead_runs["r1"]


def test_a_worker_whose_lease_expired_is_dead_and_replaced():
    """kill -9, a lost task: the run stays STARTED and keeps the shard's queue slot unless declared dead."""
    leases = table(lease("a", owner="run:r1", expires=NOW - 1))
    plan = supervise(leases, {"a": [WorkerRun("r1", "started", NOW - 3600)]}, NOW)
    assert plan.launch == ["a"] and "expired" in plan.dead_runs["r1"]


def test_a_worker_that_released_its_lease_is_let_end():
    released = lease("a", expires=NOW - 2, released_by="run:r1")
    plan = supervise(table(released), {"a": [WorkerRun("r1", "started", NOW - 3600)]}, NOW)
    assert plan.launch == [] and not plan.dead_runs
    later = lease("a", expires=NOW - FINISH_GRACE_S - 1, released_by="run:r1")
    plan = supervise(table(later), {"a": [WorkerRun("r1", "started", NOW - 3600)]}, NOW)
    assert plan.launch == ["a"] and "r1" in plan.dead_runs


def test_no_run_history_can_keep_a_shard_from_a_worker():
    """A cancelled run, a failed one, one without progress: only in-flight runs are passed, and a shard
    whose lease is free with none in flight always gets a worker (no run keys)."""
    expired_cli = lease("a", owner="host:123:abc", expires=NOW - 1)  # a crashed `etl-platform consume`
    assert supervise(table(expired_cli), {}, NOW).launch == ["a"]
    assert supervise(table(lease("a", checkpoint="42")), {}, NOW).launch == ["a"]


def test_a_worker_alive_on_another_shard_is_not_dead_and_does_not_block():
    """A 2-shard worker that got only one lease (the other was leased elsewhere when it started)."""
    leases = table(lease("a", owner="run:r1", expires=NOW + 5), lease("b"))
    plan = supervise(
        leases, {"a": [WorkerRun("r1", "started", NOW - 3600)], "b": [WorkerRun("r1", "started", NOW - 3600)]}, NOW
    )
    assert plan.launch == ["b"] and not plan.dead_runs


def test_a_successor_is_launched_ahead_of_a_handover_once():
    """The owner announces when its budget ends; within the lead the supervisor starts one successor."""
    owned = lease("a", owner="run:r1", expires=NOW + 5, handover_at=NOW + 15)
    owner_run = [WorkerRun("r1", "started", NOW - 500)]
    assert supervise(table(owned), {"a": owner_run}, NOW, handover_lead_s=10).launch == []  # not yet
    assert supervise(table(owned), {"a": owner_run}, NOW, handover_lead_s=20).launch == ["a"]
    successor = [*owner_run, WorkerRun("r2", "queued")]
    plan = supervise(table(owned), {"a": successor}, NOW, handover_lead_s=20)
    assert plan.launch == [] and "r2" in plan.waiting["a"]  # one successor, not one per tick
    # without a lead (or an owner that announced nothing) a held lease is left alone, as before
    assert supervise(table(owned), {"a": owner_run}, NOW).launch == []
    unannounced = lease("a", owner="run:r1", expires=NOW + 5)
    assert supervise(table(unannounced), {"a": owner_run}, NOW, handover_lead_s=20).launch == []
