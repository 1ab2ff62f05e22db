"""What a round asks a site to work on, as a digest both sides compute (Flower-free).

The server commits to :func:`work_digest` of the train / evaluate message it sends; each
site hashes the message it received and signs the digest bound to :func:`setup_digest` of
its own composed config, so that sites of one round provably got the same work and run
alike (:mod:`mpc.secagg.protocol`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mpc.secagg.wire import RECORD  # the protocol's own record, left out of the digest


def _canonical_value(value) -> list:
    """A record value as JSON with its type, exact for floats (hex) and bytes (hex)."""
    if isinstance(value, list):
        return ["list", [_canonical_value(v) for v in value]]
    if isinstance(value, bytes):
        return ["bytes", value.hex()]
    if isinstance(value, float):
        return ["float", value.hex()]
    return [type(value).__name__, value]


def work_digest(content: Any) -> bytes:
    """SHA-256 of everything a message asks a site to work on, secure-aggregation record
    excluded: every array record (tensors in name order, each as dtype, shape and its
    little-endian C-order bytes) and every config and metric record (keys in order, values
    with their types). Two messages hash alike only if a site would compute alike on them."""
    h = hashlib.sha256(b"primia-work/1")
    for name in sorted(content.array_records):
        h.update(json.dumps(["arrays", name]).encode())
        record = content.array_records[name]
        for key in sorted(record):
            array = np.ascontiguousarray(record[key].numpy())
            little = array.astype(array.dtype.newbyteorder("<"), copy=False)
            h.update(json.dumps([key, little.dtype.str, list(little.shape)]).encode())
            h.update(little.tobytes())
    for kind, records in (("config", content.config_records), ("metric", content.metric_records)):
        for name in sorted(records):
            if name == RECORD:
                continue
            items = sorted(records[name].items())
            h.update(
                json.dumps([kind, name, [[k, _canonical_value(v)] for k, v in items]]).encode()
            )
    return h.digest()


def setup_digest(cfg: DictConfig) -> bytes:
    """SHA-256 of a site's composed run config: sites of one round must run alike."""
    return hashlib.sha256(OmegaConf.to_yaml(cfg).encode()).digest()
