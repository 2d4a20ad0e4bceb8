"""The lease table: one owner per shard, fenced commits, and each shard's checkpoint and lineage.

Modelled on the Kinesis Client Library's lease table, in DynamoDB (the local moto server runs it).
One item per (stream, shard) holds:

- `owner`, `lease_counter`, `expires_at`: who may consume the shard. Taking a lease (free, expired,
  or released) increments the counter; every later write by that owner is conditional on the owner
  and the counter it took, so a worker that lost its lease (expired and taken by another) can never
  commit again: the counter is its fencing token.
- `checkpoint` (the last sequence number whose outputs are durable; never an iterator), `state_key`
  (the lake object holding the analytics state at that checkpoint), `finished` (a closed shard read
  to its end), `records`, `millis_behind_latest`, `committed_at`.
- `parents` and `depth` (the shard's generation, which orders replays): written once, when the item
  is created, and never recomputed, so a child's place in the stream order survives its parents
  leaving ListShards after retention.
- `pending_objects`: the lake objects of a flush that is being written and not yet committed, so
  the next attempt from the same checkpoint can remove what it does not overwrite.

Expiry compares the owner's `expires_at` with the reader's wall clock: clocks must agree to within the
safety margin a holder keeps (`LeaseHolder`), as with the KCL's failover time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from etl_platform.stream.shards import Shard, lineage_order


class LeaseLost(RuntimeError):
    """This worker no longer holds the shard's lease: it must stop without committing."""


@dataclass(frozen=True)
class Lease:
    stream: str
    shard_id: str
    owner: str | None = None
    counter: int = 0
    expires_at: float = 0.0
    checkpoint: str | None = None
    state_key: str | None = None
    finished: bool = False
    records: int = 0
    millis_behind_latest: int = 0
    committed_at: float | None = None
    parents: tuple[str, ...] = ()
    depth: int = 0
    pending_objects: tuple[str, ...] = ()
    released_by: str | None = None  # the last owner that gave the lease up (at `expires_at`)
    handover_at: float | None = None  # when the owner means to give the lease up (its budget ends)

    def held(self, now: float) -> bool:
        """Someone holds it now (a released or expired lease is free)."""
        return self.owner is not None and self.expires_at > now


@dataclass
class LeaseHolder:
    """The lease a worker holds, and the local deadline after which it must not write.

    The deadline is measured on the worker's own monotonic clock from the moment it asked for the
    lease, minus a safety margin: a write started before it finishes before another worker may take
    the lease (`expires_at` on the shared clock), as long as writes take less than the margin.
    """

    lease: Lease
    duration_s: float
    margin_s: float
    deadline: float = field(default=0.0)  # time.monotonic() value

    def check(self) -> None:
        """Raise LeaseLost if the lease may have expired: called before every durable write."""
        if time.monotonic() >= self.deadline:
            raise LeaseLost(f"lease on {self.lease.shard_id} ran past its deadline without a renewal")

    def needs_renewal(self) -> bool:
        return time.monotonic() >= self.deadline - self.duration_s / 2


def _number(value: Any, kind: type = int) -> Any:
    return kind(value) if isinstance(value, Decimal | int | float) else kind(0)


def _from_item(item: Mapping[str, Any]) -> Lease:
    return Lease(
        stream=item["stream"],
        shard_id=item["shard_id"],
        owner=item.get("owner"),
        counter=_number(item.get("lease_counter")),
        expires_at=_number(item.get("expires_at"), float),
        checkpoint=item.get("checkpoint"),
        state_key=item.get("state_key"),
        finished=bool(item.get("finished", False)),
        records=_number(item.get("records")),
        millis_behind_latest=_number(item.get("millis_behind_latest")),
        committed_at=_number(item["committed_at"], float) if item.get("committed_at") is not None else None,
        parents=tuple(item.get("parents") or ()),
        depth=_number(item.get("depth")),
        pending_objects=tuple(item.get("pending_objects") or ()),
        released_by=item.get("released_by"),
        handover_at=_number(item["handover_at"], float) if item.get("handover_at") is not None else None,
    )


def _decimal(value: float) -> Decimal:
    return Decimal(repr(round(value, 6)))


def readable(leases: Mapping[str, Lease]) -> list[Lease]:
    """Unfinished shards whose parents are finished (or gone from the table), in lineage order."""
    ready = [
        lease
        for lease in leases.values()
        if not lease.finished and all(leases[p].finished for p in lease.parents if p in leases)
    ]
    return sorted(ready, key=lambda lease: (lease.depth, lease.shard_id))


_SERIALIZE = TypeSerializer().serialize
_DESERIALIZE = TypeDeserializer().deserialize


def _values(values: Mapping[str, Any]) -> dict[str, Any]:
    return {f":{name}": _SERIALIZE(_decimal(v) if isinstance(v, float) else v) for name, v in values.items()}


def table_definition(table_name: str) -> dict[str, Any]:
    """The lease table as DynamoDB's CreateTable request: `ensure_table` sends it, and the CDK app
    (deploy/cdk) creates the production table from it."""
    return {
        "TableName": table_name,
        "KeySchema": [
            {"AttributeName": "stream", "KeyType": "HASH"},
            {"AttributeName": "shard_id", "KeyType": "RANGE"},
        ],
        "AttributeDefinitions": [
            {"AttributeName": "stream", "AttributeType": "S"},
            {"AttributeName": "shard_id", "AttributeType": "S"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def ensure_table(dynamodb: Any, table_name: str, timeout_s: float = 60) -> None:
    """Create the lease table if absent (on-demand capacity) and wait until it is ACTIVE."""
    try:
        dynamodb.create_table(**table_definition(table_name))
    except dynamodb.exceptions.ResourceInUseException:
        pass
    dynamodb.get_waiter("table_exists").wait(
        TableName=table_name, WaiterConfig={"Delay": 1, "MaxAttempts": max(1, int(timeout_s))}
    )


class LeaseTable:
    """The lease items of one stream in a DynamoDB table (a boto3 DynamoDB client)."""

    def __init__(self, dynamodb: Any, table_name: str, stream: str) -> None:
        self.dynamodb, self.table_name, self.stream = dynamodb, table_name, stream

    def _key(self, shard_id: str) -> dict[str, Any]:
        return {"stream": {"S": self.stream}, "shard_id": {"S": shard_id}}

    # --- reading ----------------------------------------------------------------------------------
    def get(self, shard_id: str) -> Lease | None:
        item = self.dynamodb.get_item(TableName=self.table_name, Key=self._key(shard_id), ConsistentRead=True)
        return _from_item({k: _DESERIALIZE(v) for k, v in item["Item"].items()}) if "Item" in item else None

    def pending_objects(self) -> set[str]:
        """The lake objects of flushes not yet committed, over every shard (see lake.visibility)."""
        return {key for lease in self.all().values() for key in lease.pending_objects}

    def all(self) -> dict[str, Lease]:
        """Every lease of the stream, by shard id (strongly consistent)."""
        leases: dict[str, Lease] = {}
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "#s = :stream",
            "ExpressionAttributeNames": {"#s": "stream"},
            "ExpressionAttributeValues": _values({"stream": self.stream}),
            "ConsistentRead": True,
        }
        while True:
            page = self.dynamodb.query(**kwargs)
            for raw in page.get("Items", []):
                lease = _from_item({k: _DESERIALIZE(v) for k, v in raw.items()})
                leases[lease.shard_id] = lease
            if "LastEvaluatedKey" not in page:
                return leases
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # --- creating ---------------------------------------------------------------------------------
    def sync(self, shards: Sequence[Shard], migrate: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Lease]:
        """Create the items of shards that have none (parents and depth fixed now, in lineage order);
        `migrate` seeds a new item's checkpoint fields (from the lake checkpoints of older versions).
        Returns every lease of the stream."""
        leases = self.all()
        for shard in lineage_order(shards):
            if shard.shard_id in leases:
                continue
            depth = 1 + max((leases[p].depth for p in shard.parents if p in leases), default=-1)
            seed = dict((migrate or {}).get(shard.shard_id) or {})
            item = {
                "stream": self.stream,
                "shard_id": shard.shard_id,
                "lease_counter": 0,
                "expires_at": Decimal(0),
                "parents": list(shard.parents),
                "depth": depth,
                "finished": bool(seed.get("finished", False)),
                "records": int(seed.get("records", 0)),
                "millis_behind_latest": int(seed.get("millis_behind_latest", 0)),
            }
            for name in ("checkpoint", "state_key"):
                if seed.get(name):
                    item[name] = seed[name]
            try:
                self.dynamodb.put_item(
                    TableName=self.table_name,
                    Item={k: _SERIALIZE(v) for k, v in item.items()},
                    ConditionExpression="attribute_not_exists(shard_id)",
                )
            except self.dynamodb.exceptions.ConditionalCheckFailedException:
                pass  # another process created it first: keep theirs
            lease = self.get(shard.shard_id)
            assert lease is not None
            leases[shard.shard_id] = lease
        return leases

    # --- owning -----------------------------------------------------------------------------------
    def take(
        self,
        shard_id: str,
        owner: str,
        duration_s: float,
        margin_s: float | None = None,
        handover_at: float | None = None,
    ) -> LeaseHolder | None:
        """Take the shard's lease if it is free, released or expired; None if someone else holds it.

        `handover_at` (epoch seconds) says when this owner means to give the lease up, so that a
        supervisor can start its successor ahead of time."""
        margin = duration_s / 3 if margin_s is None else margin_s
        asked = time.monotonic()
        now = time.time()
        values = {"owner": owner, "expires": now + duration_s, "now": now, "one": 1}
        if handover_at is None:
            update = "SET #o = :owner, expires_at = :expires REMOVE handover_at ADD lease_counter :one"
        else:
            update = "SET #o = :owner, expires_at = :expires, handover_at = :handover ADD lease_counter :one"
            values["handover"] = handover_at
        try:
            item = self.dynamodb.update_item(
                TableName=self.table_name,
                Key=self._key(shard_id),
                UpdateExpression=update,
                ConditionExpression="attribute_exists(shard_id) AND (attribute_not_exists(#o) OR expires_at < :now)",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues=_values(values),
                ReturnValues="ALL_NEW",
            )
        except self.dynamodb.exceptions.ConditionalCheckFailedException:
            return None
        lease = _from_item({k: _DESERIALIZE(v) for k, v in item["Attributes"].items()})
        return LeaseHolder(lease, duration_s, margin, deadline=asked + duration_s - margin)

    def _owned_update(
        self, holder: LeaseHolder, update: str, values: Mapping[str, Any], names: Mapping[str, str] | None = None
    ) -> Lease:
        """An update that succeeds only while `holder` still owns the lease (owner and counter)."""
        lease = holder.lease
        try:
            item = self.dynamodb.update_item(
                TableName=self.table_name,
                Key=self._key(lease.shard_id),
                UpdateExpression=update,
                ConditionExpression="#o = :me AND lease_counter = :counter",
                ExpressionAttributeNames={"#o": "owner", **(names or {})},
                ExpressionAttributeValues=_values({**values, "me": lease.owner, "counter": lease.counter}),
                ReturnValues="ALL_NEW",
            )
        except self.dynamodb.exceptions.ConditionalCheckFailedException:
            raise LeaseLost(f"lease on {lease.shard_id} is no longer held by {lease.owner}") from None
        holder.lease = _from_item({k: _DESERIALIZE(v) for k, v in item["Attributes"].items()})
        return holder.lease

    def keep(self, holder: LeaseHolder) -> None:
        """Before a write: renew the lease once half of it has run (a conditional write, so success also
        proves nobody took it meanwhile); LeaseLost if it was taken or the renewal came too late."""
        if holder.needs_renewal():
            self.renew(holder)
        holder.check()

    def renew(self, holder: LeaseHolder) -> Lease:
        """Extend the lease by its duration; LeaseLost if it was taken meanwhile."""
        asked = time.monotonic()
        lease = self._owned_update(holder, "SET expires_at = :expires", {"expires": time.time() + holder.duration_s})
        holder.deadline = asked + holder.duration_s - holder.margin_s
        return lease

    def set_pending(self, holder: LeaseHolder, keys: Iterable[str]) -> Lease:
        """Record the lake objects a flush is about to write (before writing them)."""
        holder.check()
        return self._owned_update(holder, "SET pending_objects = :keys", {"keys": sorted(set(keys))})

    def commit(
        self,
        holder: LeaseHolder,
        checkpoint: str | None,
        state_key: str,
        finished: bool,
        records: int,
        millis_behind_latest: int,
    ) -> Lease:
        """The commit point: checkpoint and analytics state advance together, only for the lease's owner."""
        holder.check()
        return self._owned_update(
            holder,
            "SET checkpoint = :checkpoint, state_key = :state, finished = :finished, #r = :records, "
            "millis_behind_latest = :behind, committed_at = :at, pending_objects = :none",
            {
                "checkpoint": checkpoint,
                "state": state_key,
                "finished": finished,
                "records": records,
                "behind": millis_behind_latest,
                "at": time.time(),
                "none": [],
            },
            names={"#r": "records"},
        )

    def delete_all(self) -> None:
        """Forget every lease of the stream (tests, and replays from scratch; never beside running workers)."""
        for shard_id in self.all():
            self.dynamodb.delete_item(TableName=self.table_name, Key=self._key(shard_id))

    def release(self, holder: LeaseHolder) -> None:
        """Give the lease up now (another worker may take it at once); quiet if it was already lost."""
        try:
            self._owned_update(
                holder,
                "REMOVE #o, handover_at SET expires_at = :now, released_by = :me_again",
                {"now": time.time(), "me_again": holder.lease.owner},
            )
        except LeaseLost:
            pass
