"""Read an offline wandb run back: the history rows its ``run-<id>.wandb`` file holds.

The file is a LevelDB-style log (wandb's ``datastore`` format): a 7-byte header
(``:W&B``, magic, version), then 32 KiB blocks of chunks, each with a 7-byte header (CRC32,
length, type: full, first, middle or last). Every record is a ``wandb_internal_pb2.Record``;
the installed wandb ships the protobuf classes but no reader of its own.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

HEADER = 7
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _records(data: bytes) -> list[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a wandb run file")
    out, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            break
        pending += data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            out.append(pending)
            pending = b""
    return out


def offline_runs(root: Path) -> list[Path]:
    """Every offline run's ``.wandb`` file under ``root`` (``latest-run`` is a link)."""
    return sorted(p for p in root.rglob("offline-run-*/run-*.wandb"))


def _parsed(run_file: Path) -> list[wandb_internal_pb2.Record]:
    out = []
    for raw in _records(run_file.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        out.append(record)
    return out


def finished_records(run_file: Path, timeout: float = 60.0) -> list[wandb_internal_pb2.Record]:
    """The run's records once its ``exit`` record is on disk.

    Why wait: ``wandb.finish()`` can return before wandb's writer process has flushed the
    file (seen under load: only the 7-byte header was there), so a read right after it may
    find nothing yet. The exit record is written last, after every history row.
    """
    deadline = time.monotonic() + timeout
    while True:
        records = _parsed(run_file)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            kinds = sorted({r.WhichOneof("record_type") for r in records})
            raise TimeoutError(f"{run_file} has no exit record after {timeout:.0f} s: {kinds}")
        time.sleep(0.2)


def history(run_file: Path) -> list[dict[str, Any]]:
    """The run's logged rows, in order, each ``{key: value}`` (``_step`` included)."""
    rows = []
    for record in finished_records(run_file):
        if record.WhichOneof("record_type") == "history":
            items = record.history.item
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items})
    return rows
