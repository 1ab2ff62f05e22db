"""A site's ClientApp restores the records the deployed server packed.

The packing is :mod:`task.federation.transport`. The outermost mod: everything inside it
(the audit log, the policy, secure aggregation's commitment check, the handlers) sees the
message as the strategy made it.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from task.federation.transport import LAYOUTS, PACKED, unpack


def unpacked_content(content: RecordDict) -> RecordDict:
    """``content`` with each packed array record restored; ValueError, naming the record,
    when one does not unpack."""
    layouts = content.config_records.get(LAYOUTS)
    if layouts is None:
        return content
    records = {name: record for name, record in content.items() if name != LAYOUTS}
    for name, layout in layouts.items():
        record = content.array_records.get(name)
        if record is None or set(record) != {PACKED} or not isinstance(layout, str):
            raise ValueError(f"packed record {name!r} is missing or malformed")
        try:
            arrays = unpack(bytes(record[PACKED].numpy()), layout)
        except ValueError as err:
            raise ValueError(f"packed record {name!r}: {err}") from None
        records[name] = ArrayRecord({key: Array(**fields) for key, fields in arrays})
    return RecordDict(records)


def unpack_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Restore ``msg``'s packed records in place (its id and metadata stay the server's, so
    that the reply answers it), then pass it on."""
    if not msg.has_error() and LAYOUTS in msg.content.config_records:
        msg.content = unpacked_content(msg.content)
    return call_next(msg, context)
