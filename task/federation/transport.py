"""A record's many arrays as one buffer on the wire (Flower-free).

Why: a deployed Flower message carries each array of a record as an object of its own, and
the SuperNode asks the SuperLink for each one in its own authenticated request, which the
SuperLink answers with a signature check and several SQL statements. The default network's
77 tensors made about 160 such requests per site per train or evaluate message. Packed, a
record is one array (one request per 5 MB chunk) and a layout.

Lossless by construction: each array's serialised bytes travel untouched, with its dtype,
shape and serialisation, so the unpacked record is the record the strategy made (the
secure-aggregation commitment, a digest of the work, is computed on it at both ends).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

#: The one key of a packed array record.
PACKED = "packed"
#: The config record of a packed message: {record name: its layout as JSON}.
LAYOUTS = "packed-layouts"


def pack(arrays: Mapping[str, Any]) -> tuple[bytes, str]:
    """``arrays`` ({key: an array with ``dtype``, ``shape``, ``stype`` and ``data``, such
    as Flower's ``Array``}) as their bytes end to end and a layout, JSON of
    ``[[key, dtype, shape, stype, nbytes], ...]`` in the record's order."""
    layout, parts = [], []
    for key, array in arrays.items():
        data = bytes(array.data)
        layout.append([key, array.dtype, list(array.shape), array.stype, len(data)])
        parts.append(data)
    return b"".join(parts), json.dumps(layout)


def _entry(entry: Any) -> tuple[str, str, list[int], str, int]:
    if not (isinstance(entry, list) and len(entry) == 5):
        raise ValueError(f"layout entry {entry!r} is not [key, dtype, shape, stype, nbytes]")
    key, dtype, shape, stype, nbytes = entry
    text = all(isinstance(v, str) for v in (key, dtype, stype))
    sizes = isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
    if not (text and sizes and type(nbytes) is int and nbytes >= 0):
        raise ValueError(f"layout entry {entry!r} is not [key, dtype, shape, stype, nbytes]")
    return key, dtype, shape, stype, nbytes


def unpack(blob: bytes, layout: str) -> list[tuple[str, dict[str, Any]]]:
    """The ``(key, {dtype, shape, stype, data})`` of each packed array, in order.

    Raises ValueError when the layout is malformed, repeats a key, or does not cover
    ``blob`` exactly.
    """
    try:
        entries = [_entry(e) for e in json.loads(layout)]
    except (TypeError, RecursionError, json.JSONDecodeError) as err:
        raise ValueError(f"packed layout is not a JSON list of entries ({err})") from None
    keys = [e[0] for e in entries]
    if len(set(keys)) != len(keys):
        raise ValueError(f"packed layout repeats a key: {sorted(keys)}")
    total = sum(e[4] for e in entries)
    if total != len(blob):
        raise ValueError(f"packed layout covers {total} bytes; the buffer holds {len(blob)}")
    out, start = [], 0
    for key, dtype, shape, stype, nbytes in entries:
        data = blob[start : start + nbytes]
        out.append((key, {"dtype": dtype, "shape": tuple(shape), "stype": stype, "data": data}))
        start += nbytes
    return out
