"""What a site logs for each reply, and the mod that logs it before the reply is sent.

An entry holds the run, round, message type, the request answered, the destination, Flower's
content id of the reply and each record's size, and the ε/δ the reply reports; never the
values sent. The chain itself (hashes, locking, appending) is :mod:`client.site_log`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod
from omegaconf import DictConfig

from client.site_log import LOG_FILE, SiteLog, SiteLogError
from mpc.secagg import wire
from task.constants import SITE_RECORD
from task.federation.node import DATA_PATH, STATE_DIR, site_name, site_state_dir

log = logging.getLogger(__name__)

#: Optional node-config key: the SuperLink address this SuperNode was started with (Flower
#: does not tell the ClientApp); logged as the destination's address when given.
SUPERLINK = "superlink"
#: Run-config keys logged with every reply (deployment; a simulation has none).
RUN_KEYS = ("experiment", "overrides")


def _number(value: Any) -> float | str | None:
    """A JSON-safe ε or δ (a non-finite float as text)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else str(value)


def _round(msg: Message) -> int | None:
    if msg.has_content():
        config = msg.content.config_records.get("config")
        if config is not None and "server-round" in config:
            return int(config["server-round"])
        secure = msg.content.config_records.get(wire.RECORD)
        if secure is not None and "round" in secure:
            return int(secure["round"])
    group = msg.metadata.group_id
    return int(group) if group.isdigit() else None


def _secagg(msg: Message) -> dict[str, str] | None:
    """The secure-aggregation stage a request belongs to (``mask``: a masked update)."""
    record = msg.content.config_records.get(wire.RECORD) if msg.has_content() else None
    if record is None:
        return None
    return {"stage": str(record.get("stage", "mask")), "kind": str(record.get("kind", ""))}


def _records(reply: Message) -> dict[str, dict[str, Any]]:
    """Per record: its type and bytes (array payloads; serialised config and metrics)."""
    out = {}
    for name, record in reply.content.items():
        if isinstance(record, ArrayRecord):
            size = sum(len(array.data) for array in record.values())
        else:
            size = len(record.deflate())
        out[name] = {"type": type(record).__name__, "bytes": size}
    return out


def _common(msg: Message, context: Context) -> dict[str, Any]:
    """Run, round, type, request answered and destination (from the request)."""
    run = {k: str(context.run_config[k]) for k in RUN_KEYS if context.run_config.get(k)}
    superlink = context.node_config.get(SUPERLINK)
    return {
        "run_id": int(msg.metadata.run_id),
        "run_config": run or None,
        "round": _round(msg),
        "message_type": msg.metadata.message_type,
        "group_id": msg.metadata.group_id,
        "reply_to": msg.metadata.message_id,
        "to_node": int(msg.metadata.src_node_id),
        "superlink": str(superlink) if superlink else None,
        "secagg": _secagg(msg),
    }


def reply_fields(msg: Message, reply: Message, context: Context) -> dict[str, Any]:
    """The entry for ``reply`` to ``msg``: digests and sizes, never the values."""
    fields = _common(msg, context) | {"to_node": int(reply.metadata.dst_node_id)}
    if reply.has_error():
        return fields | {
            "kind": "error",
            "error": {"code": int(reply.error.code), "reason": str(reply.error.reason)},
        }
    site = reply.content.config_records.get(SITE_RECORD) or {}
    records = _records(reply)
    return fields | {
        "kind": "reply",
        "digest": reply.content.object_id,
        "bytes": sum(r["bytes"] for r in records.values()),
        "records": records,
        "epsilon": _number(site.get("epsilon")),
        "delta": _number(site.get("delta")),
    }


def error_fields(msg: Message, context: Context, err: BaseException) -> dict[str, Any]:
    """The entry for a handler (or inner mod) that raised ``err``: Flower's runtime sends its
    type and text to the server as the error reply's reason.

    The text is logged, not hashed: the server receives the same words, so the log holds
    nothing that has not left the site already, and an auditor can read what was said.
    Exception texts name settings, sites, files and ε, never pixel or metric values."""
    kind = type(err)
    return _common(msg, context) | {
        "kind": "error",
        "error": {"type": f"{kind.__module__}.{kind.__qualname__}", "reason": str(err)},
    }


_unlogged: set[str] = set()


def site_log_for(cfg: DictConfig, node_config: Mapping[str, Any]) -> SiteLog | None:
    """This node's log; ``None`` (with a warning) for a site without a state folder that
    reads no data of its own (in-process tests); an error for a deployed one."""
    name = site_name(node_config)
    if STATE_DIR in node_config or cfg.get("run_dir"):
        return SiteLog(site_state_dir(cfg, node_config) / LOG_FILE, name)
    if DATA_PATH in node_config:
        raise SiteLogError(
            f"site {name} reads its own data ('{DATA_PATH}') but its node config has no "
            f"'{STATE_DIR}': it keeps its audit log there and answers nothing without one"
        )
    if name not in _unlogged:
        _unlogged.add(name)
        log.warning("site %s has no state folder: its replies are not logged", name)
    return None


def make_site_log_mod(get_cfg: Callable[[Context], DictConfig]) -> Mod:
    """A mod that logs every reply the handlers (and inner mods) produce: put it first (a
    ClientApp's own ``mods``), so that what it logs is what leaves the site."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        site_log = site_log_for(get_cfg(context), context.node_config)
        if site_log is None:
            return call_next(msg, context)
        site_log.head()  # fail before any work if the log is unwritable or damaged
        try:
            reply = call_next(msg, context)
        except Exception as err:
            site_log.append(error_fields(msg, context, err))
            raise
        site_log.append(reply_fields(msg, reply, context))
        return reply

    return mod
