"""How the secure aggregation protocol travels in Flower messages (both sides use this).

Flower-free: records are read as mappings and messages through their ``content`` (Flower's
``ConfigRecord`` is a mapping), and each ``*_record`` function returns the plain dict that
the caller wraps in a ``ConfigRecord``.

Key stages go as ``query.secagg`` messages whose ``secagg`` ConfigRecord names the stage;
the masking stage rides on the ordinary train / evaluate message (the ciphertexts addressed
to the site), and the site's masked vector replaces its plaintext reply.

Decoding trusts nothing: a record with a missing field, a field of the wrong type, lists of
unequal length, a key of the wrong size or a layout that does not fit its vector is refused
with :class:`MalformedMessage` (both a ``ProtocolViolation`` and a ``ValueError``) naming
the field, so that the server drops that one site and the round goes on.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from omegaconf import DictConfig

from mpc.secagg.fixedpoint import check_layout
from mpc.secagg.protocol import Commitment, KeyAdvert, MalformedMessage, RoundId

MESSAGE_TYPE = "query.secagg"
RECORD = "secagg"  # ConfigRecord with the stage's payload, both ways
MASKED = "secagg-masked"  # ArrayRecord holding the masked vector
LAYOUT = "secagg-layout"  # ConfigRecord holding the vector's (data-free) layout
SITE_METRICS = "site-metrics"  # plaintext per-site metrics a site chose to share
STATE = "secagg-session"  # the site's session state in Context.state
ARRAYS, METRICS = "arrays/", "metrics/"  # name prefixes in the packed vector's layout
#: The ``secure`` config's target when secure aggregation is on; sites then refuse to send
#: any update or count in the clear.
SECURE_TARGET = "strategies.secure.SecureAggregation"


def _field(record: Mapping[str, Any], key: str, kind: type):
    """``record[key]``, which must be of type ``kind`` exactly (a bool is not an int)."""
    try:
        value = record[key]
    except KeyError:
        raise MalformedMessage(f"secure aggregation record has no {key!r} field") from None
    if type(value) is not kind:
        raise MalformedMessage(f"field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def field_of(record: Mapping[str, Any], key: str, kind: type):
    """``record[key]`` of type ``kind`` exactly, or :class:`MalformedMessage`."""
    return _field(record, key, kind)


def _columns(record: Mapping[str, Any], columns: dict[str, type]) -> list[tuple]:
    """Rows of the equally long list fields ``columns`` ({key: element type})."""
    lists = []
    for key, kind in columns.items():
        value = _field(record, key, list)
        if not all(type(v) is kind for v in value):
            raise MalformedMessage(f"field {key!r} must be a list of {kind.__name__}")
        lists.append(value)
    if len({len(v) for v in lists}) > 1:
        raise MalformedMessage(
            f"fields {list(columns)} are lists of different lengths {[len(v) for v in lists]}"
        )
    return list(zip(*lists, strict=True))


def round_record(round_id: RoundId, stage: str, **fields) -> dict[str, Any]:
    return {
        "stage": stage,
        "run": round_id.run,
        "round": round_id.round,
        "kind": round_id.kind,
    } | fields


def round_id_of(record: Mapping[str, Any]) -> RoundId:
    round_no = _field(record, "round", int)
    if round_no < 0:
        raise MalformedMessage(f"field 'round' is {round_no}, must be >= 0")
    return RoundId(_field(record, "run", str), round_no, _field(record, "kind", str))


def advert_record(advert: KeyAdvert) -> dict[str, Any]:
    return {
        "site": advert.site,
        "channel-pk": advert.channel_pk,
        "mask-pk": advert.mask_pk,
        "signature": advert.signature,
    }


def advert_of(record: Mapping[str, Any]) -> KeyAdvert:
    return KeyAdvert(
        _field(record, "site", str),
        _field(record, "channel-pk", bytes),
        _field(record, "mask-pk", bytes),
        _field(record, "signature", bytes),
    )


def has_advert(record: Mapping[str, Any]) -> bool:
    """Whether an unmask reply carries the site's keys for the next round."""
    return "channel-pk" in record


def adverts_fields(adverts: list[KeyAdvert]) -> dict:
    return {
        "sites": [a.site for a in adverts],
        "channel-pks": [a.channel_pk for a in adverts],
        "mask-pks": [a.mask_pk for a in adverts],
        "signatures": [a.signature for a in adverts],
    }


def adverts_of(record: Mapping[str, Any]) -> list[KeyAdvert]:
    columns = {"sites": str, "channel-pks": bytes, "mask-pks": bytes, "signatures": bytes}
    return [KeyAdvert(*row) for row in _columns(record, columns)]


def digest_of(record: Mapping[str, Any]) -> bytes:
    """The server's committed digest of the round's work (share request)."""
    return _field(record, "digest", bytes)


def commitment_fields(commitment: Commitment) -> dict:
    """A site's commitment, in its share reply (the sender names the site)."""
    return {"commit-digest": commitment.digest, "commit-signature": commitment.signature}


def commitment_of(record: Mapping[str, Any], site: str) -> Commitment:
    return Commitment(
        site, _field(record, "commit-digest", bytes), _field(record, "commit-signature", bytes)
    )


def commitments_fields(commitments: dict[str, Commitment]) -> dict:
    """The cohort's commitments, in each mask request."""
    return {
        "committers": list(commitments),
        "commit-digests": [c.digest for c in commitments.values()],
        "commit-signatures": [c.signature for c in commitments.values()],
    }


def commitments_of(record: Mapping[str, Any]) -> dict[str, Commitment]:
    columns = {"committers": str, "commit-digests": bytes, "commit-signatures": bytes}
    rows = _columns(record, columns)
    out = {site: Commitment(site, digest, sig) for site, digest, sig in rows}
    if len(out) != len(rows):
        raise MalformedMessage("field 'committers' repeats names")
    return out


def next_fields(round_id: RoundId, selected: int) -> dict:
    """The round whose keys the unmask request asks each site to send with its shares."""
    return {"next-round": round_id.round, "next-kind": round_id.kind, "next-selected": selected}


_NEXT_KINDS = {"train": 0, "evaluate": 1}  # a round's evaluation follows its training


def _rank(round_id: RoundId) -> tuple[int, int]:
    return round_id.round, _NEXT_KINDS[round_id.kind]


def next_of(record: Mapping[str, Any], current: RoundId) -> tuple[RoundId, int] | None:
    """``(round id, selected)`` of the next round an unmask request names, or None. Only a
    training or evaluation round later than ``current`` in the same run: a server must not
    reopen a round (or start another kind of exchange) by this path."""
    if "next-round" not in record:
        return None
    following = RoundId(
        current.run, _field(record, "next-round", int), _field(record, "next-kind", str)
    )
    kinds_ok = current.kind in _NEXT_KINDS and following.kind in _NEXT_KINDS
    if not kinds_ok or _rank(following) <= _rank(current):
        raise MalformedMessage(
            f"the unmask request of {current} names {following} as the next round"
        )
    return following, _field(record, "next-selected", int)


def lists_of(record: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """``(survivors, dropped)`` of a consistency or unmask request."""
    lists = []
    for key in ("survivors", "dropped"):
        value = _field(record, key, list)
        if not all(type(v) is str for v in value):
            raise MalformedMessage(f"field {key!r} must be a list of str")
        lists.append(list(value))
    return lists[0], lists[1]


def _named_bytes(record: Mapping[str, Any], names: str, values: str) -> dict[str, bytes]:
    """``{name: bytes}`` from the equally long list fields ``names`` and ``values``."""
    rows = _columns(record, {names: str, values: bytes})
    out = dict(rows)
    if len(out) != len(rows):
        raise MalformedMessage(f"field {names!r} repeats names")
    return out


def signatures_fields(signatures: dict[str, bytes]) -> dict:
    return {"signers": list(signatures), "list-signatures": list(signatures.values())}


def signatures_of(record: Mapping[str, Any]) -> dict[str, bytes]:
    return _named_bytes(record, "signers", "list-signatures")


def blobs_fields(blobs: dict[str, bytes]) -> dict:
    return {"names": list(blobs), "blobs": list(blobs.values())}


def blobs_of(record: Mapping[str, Any]) -> dict[str, bytes]:
    return _named_bytes(record, "names", "blobs")


def masked_records(vector: np.ndarray, layout: list) -> tuple[np.ndarray, dict[str, str]]:
    """The masked vector as the ``uint64`` array to send under :data:`MASKED` (key
    ``masked``) and its layout record's fields (under :data:`LAYOUT`)."""
    return np.asarray(vector, dtype=np.uint64), {"layout": json.dumps(layout)}


def _ring_vector(array: Any) -> np.ndarray:
    """The 1-D ``uint64`` vector in ``array``. Its ``.npy`` header is checked against the
    data's length before anything is allocated (``Array.numpy`` would trust the header)."""
    if array.stype != "numpy.ndarray":
        raise MalformedMessage(f"masked vector of serialisation {array.stype!r}")
    data = bytes(array.data)
    buffer = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buffer)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(buffer)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(buffer)
        else:
            raise ValueError(f".npy format version {version}")
    except (ValueError, SyntaxError, RecursionError, EOFError, TypeError) as err:
        raise MalformedMessage(f"masked vector is not a .npy array: {err}") from None
    if dtype != np.dtype("<u8"):
        raise MalformedMessage(f"masked vector of dtype {dtype}, expected uint64")
    if len(shape) != 1:
        raise MalformedMessage(f"masked vector of shape {shape}, expected one dimension")
    size = len(data) - buffer.tell()
    if shape[0] * 8 != size:
        raise MalformedMessage(f"masked vector declares {shape[0]} values, holds {size} bytes")
    return np.frombuffer(data, dtype="<u8", offset=buffer.tell()).astype(np.uint64)


def masked_of(msg: Any) -> tuple[np.ndarray, list]:
    """The masked vector and its layout, checked to cover the vector exactly, so that
    :func:`mpc.secagg.fixedpoint.unpack` cannot fail on a sum of accepted vectors."""
    arrays = msg.content.array_records.get(MASKED)
    if arrays is None or "masked" not in arrays:
        raise MalformedMessage(f"reply has no masked vector ({MASKED!r} array record)")
    vector = _ring_vector(arrays["masked"])
    record = msg.content.config_records.get(LAYOUT)
    if record is None:
        raise MalformedMessage(f"reply has no layout ({LAYOUT!r} config record)")
    try:
        layout = json.loads(_field(record, "layout", str))
        check_layout(layout, len(vector))
    except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise MalformedMessage(f"layout of the masked vector refused: {err}") from None
    return vector, layout


def secure_enabled(cfg: DictConfig) -> bool:
    """Whether the composed config asks for secure aggregation (``secure=smpc``)."""
    return cfg.get("secure", {}).get("_target_") == SECURE_TARGET
