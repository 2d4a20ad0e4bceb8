"""Arrow columns to PostgreSQL's binary COPY format, vectorised (no Python loop over rows).

Why not `copy.write_row`: it visits every value from Python; on this kind of machine that costs
about as much again as the server's own work for a million rows. Here each column becomes an
array of wire-format fields with Arrow compute (big-endian values via `array.byteswap`, 4-byte
length prefixes), one `binary_join_element_wise` glues the fields of each row together, and the
joined buffer is sent as is. Chunks of rows are encoded while the server parses the previous chunk.

Binary COPY needs the exact wire type of each target column, so every column is first cast to the
Arrow type of its warehouse kind (a safe cast: a value that does not fit is an error, not a wrap).
"""

from __future__ import annotations

import array
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as _compute

# pyarrow.compute creates its kernel functions (sum, equal, ...) at import time and pyarrow ships no
# stubs, so the type checker cannot see them: the module is typed Any here.
pc: Any = _compute

HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
TRAILER = (-1).to_bytes(2, "big", signed=True)
NULL_FIELD = (-1).to_bytes(4, "big", signed=True)
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in microseconds since 1970-01-01
PG_EPOCH_DAYS = 10_957
ROWS_PER_CHUNK = 100_000
_EMPTY = pa.scalar(b"", pa.large_binary())  # the join separator

# kind -> (Arrow type to cast to, array-module code for the byte swap, width)
_FIXED = {
    "int16": (pa.int16(), "h", 2),
    "int32": (pa.int32(), "i", 4),
    "int64": (pa.int64(), "q", 8),
    "float32": (pa.float32(), "f", 4),
    "float64": (pa.float64(), "d", 8),
    "timestamp": (pa.int64(), "q", 8),
    "date": (pa.int32(), "i", 4),
    "bool": (pa.uint8(), "", 1),
}


def _big_endian(values: pa.Array, code: str, width: int) -> bytes:
    raw = values.buffers()[1]
    data = memoryview(raw)[values.offset * width : (values.offset + len(values)) * width]
    if not code:
        return bytes(data)
    swapped = array.array(code)
    swapped.frombytes(data)
    swapped.byteswap()
    return swapped.tobytes()


def _fixed_binary(width: int, data: bytes, length: int) -> pa.Array:
    fixed = pa.Array.from_buffers(pa.binary(width), length, [None, pa.py_buffer(data)])
    return fixed.cast(pa.large_binary())


def _physical(column: pa.Array, kind: str) -> pa.Array:
    """Values as the integer/float Arrow type whose bytes are the PostgreSQL wire value."""
    if kind == "timestamp":
        if not pa.types.is_timestamp(column.type):
            column = column.cast(pa.timestamp("us"))
        column = column.cast(pa.timestamp("us", column.type.tz))  # safe: refuses to drop nanoseconds
        return pc.subtract(column.cast(pa.int64()), pa.scalar(PG_EPOCH_US, pa.int64()))
    if kind == "date":
        return pc.subtract(column.cast(pa.date32()).cast(pa.int32()), pa.scalar(PG_EPOCH_DAYS, pa.int32()))
    if kind == "bool":
        return column.cast(pa.bool_()).cast(pa.uint8())
    return column.cast(_FIXED[kind][0])


def encode_column(column: pa.Array | pa.ChunkedArray, kind: str) -> list[pa.Array | pa.Scalar]:
    """Wire-format pieces of one column: [length prefix, payload] whose row-wise join is the field."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    n = len(column)
    if kind == "string":
        text = column.cast(pa.large_string())
        lengths = pc.binary_length(text).cast(pa.int32())
        if text.null_count:
            lengths, text = lengths.fill_null(-1), text.fill_null("")
        prefix = _fixed_binary(4, _big_endian(lengths, "i", 4), n)
        return [prefix, text.cast(pa.large_binary())]
    _, code, width = _FIXED[kind]
    values = _physical(column, kind)
    nulls = values.is_null() if values.null_count else None
    if nulls is not None:
        values = values.fill_null(0)
    payload = _fixed_binary(width, _big_endian(values, code, width), n)
    if nulls is None:
        return [pa.scalar(width.to_bytes(4, "big"), pa.large_binary()), payload]
    field = pc.binary_join_element_wise(pa.scalar(width.to_bytes(4, "big"), pa.large_binary()), payload, _EMPTY)
    return [pc.if_else(nulls, pa.scalar(NULL_FIELD, pa.large_binary()), field)]


def encode_rows(table: pa.Table, kinds: Sequence[str]) -> memoryview:
    """The binary COPY rows (without header/trailer) of a table whose columns match `kinds`."""
    if table.num_columns != len(kinds):
        raise ValueError(f"{table.num_columns} columns but {len(kinds)} kinds")
    if table.num_rows == 0:
        return memoryview(b"")
    pieces: list[pa.Array | pa.Scalar] = [pa.scalar(len(kinds).to_bytes(2, "big"), pa.large_binary())]
    for column, kind in zip(table.columns, kinds, strict=True):
        pieces += encode_column(column, kind)
    rows = pc.binary_join_element_wise(*pieces, _EMPTY)
    offsets = memoryview(rows.buffers()[1]).cast("B").cast("q")  # int64 offsets, native order
    start, end = offsets[rows.offset], offsets[rows.offset + len(rows)]
    return memoryview(rows.buffers()[2])[start:end]


def copy_chunks(table: pa.Table, kinds: Sequence[str], rows_per_chunk: int = ROWS_PER_CHUNK) -> Iterator[memoryview]:
    """The whole COPY stream: header, rows in chunks, trailer. Lazy, so encoding overlaps sending."""
    yield memoryview(HEADER)
    for start in range(0, table.num_rows, rows_per_chunk):
        yield encode_rows(table.slice(start, rows_per_chunk), kinds)
    yield memoryview(TRAILER)
