"""Fuzzing the secure aggregation records: a garbled record decodes to well-typed protocol
objects or is refused with :class:`ProtocolViolation`, never a KeyError, TypeError, huge
allocation or numpy error that would stop the server's round (it drops only a refused site).

Records are valid ones garbled field by field (dropped, retyped, truncated, bit-flipped,
extra fields), so the search starts next to what the protocol really sends.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mpc.secagg import crypto, wire
from mpc.secagg.errors import ProtocolViolation
from mpc.secagg.fixedpoint import pack, unpack
from mpc.secagg.protocol import Commitment, KeyAdvert, RoundId
from mpc.secagg.reference import make_identities
from mpc.secagg.site import SiteSession

# The autouse TaskIdentity fixture (this folder's conftest) only sets ids.
FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

RID = RoundId("run-7", 3, "train")
NAMES = ["site-0", "site-1", "site-2"]
_IDS, _ROSTER = make_identities(NAMES)
ADVERTS = [SiteSession(n, RID, 0.66).advertise(_IDS[n], 3) for n in NAMES]
BLOBS = {"site-1": crypto.random_seed() * 3, "site-2": b"\x01" * 92}
COMMITMENTS = {n: Commitment(n, bytes([i]) * 32, b"\x02" * 64) for i, n in enumerate(NAMES)}

SCALARS = (
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=40),
    st.booleans(),
)
VALUE = st.one_of(*SCALARS, *(st.lists(s, max_size=4) for s in SCALARS))


@st.composite
def _mutated(draw, value):
    """``value`` with one small change that keeps its type, or a value of any type."""
    if isinstance(value, bytes) and draw(st.booleans()):
        cut = draw(st.integers(0, len(value) + 2))
        return (value + draw(st.binary(max_size=3)))[:cut]
    if isinstance(value, list) and value and draw(st.booleans()):
        value = list(value)
        i = draw(st.integers(0, len(value) - 1))
        if draw(st.booleans()):
            del value[i]
        else:
            value[i] = draw(_mutated(value[i]))
        try:
            ConfigRecord({"x": value})
        except TypeError:  # a list of mixed types cannot travel in a ConfigRecord
            return draw(VALUE)
        return value
    return draw(VALUE)


@st.composite
def garbled(draw, valid: dict) -> ConfigRecord:
    """``valid`` with each field kept, dropped or mutated, plus maybe a stray field."""
    fields = {}
    for key, value in valid.items():
        how = draw(st.sampled_from(("keep", "keep", "drop", "mutate")))
        if how == "keep":
            fields[key] = value
        elif how == "mutate":
            fields[key] = draw(_mutated(value))
    fields |= draw(st.dictionaries(st.text(max_size=8), VALUE, max_size=2))
    return ConfigRecord(fields)


def _valid_round() -> dict:
    return dict(wire.round_record(RID, "share", **wire.adverts_fields(ADVERTS)))


@FUZZ
@given(garbled(_valid_round()))
@example(ConfigRecord({"run": "r", "round": 1.5, "kind": "train"}))
@example(ConfigRecord({"run": "r", "round": float("inf"), "kind": "train"}))
@example(ConfigRecord({"run": b"r", "round": True, "kind": ["train"]}))
def test_round_id_decodes_or_is_refused(record: ConfigRecord) -> None:
    try:
        rid = wire.round_id_of(record)
    except ProtocolViolation as err:
        assert "round" in str(err) or "run" in str(err) or "kind" in str(err)
        return
    assert isinstance(rid.run, str) and isinstance(rid.kind, str)
    assert type(rid.round) is int and rid.round >= 0


def _check_advert(advert: KeyAdvert) -> None:
    assert isinstance(advert.site, str)
    assert isinstance(advert.channel_pk, bytes) and len(advert.channel_pk) == 32
    assert isinstance(advert.mask_pk, bytes) and len(advert.mask_pk) == 32
    assert isinstance(advert.signature, bytes)


@FUZZ
@given(garbled(dict(wire.advert_record(ADVERTS[0]))))
@example(ConfigRecord({"site": "a", "channel-pk": 10**12, "mask-pk": b"", "signature": b""}))
@example(ConfigRecord({"site": "a", "channel-pk": [1, 2], "mask-pk": "x", "signature": 0}))
def test_advert_decodes_or_is_refused(record: ConfigRecord) -> None:
    try:
        advert = wire.advert_of(record)
    except ProtocolViolation:
        return
    _check_advert(advert)


@FUZZ
@given(garbled(_valid_round()))
@example(ConfigRecord({"sites": "abc", "channel-pks": 3, "mask-pks": [], "signatures": []}))
@example(ConfigRecord({"sites": ["a"], "channel-pks": [], "mask-pks": [], "signatures": []}))
def test_advert_list_decodes_or_is_refused(record: ConfigRecord) -> None:
    try:
        adverts = wire.adverts_of(record)
    except ProtocolViolation:
        return
    for advert in adverts:
        _check_advert(advert)


@FUZZ
@given(garbled(wire.blobs_fields(BLOBS)))
@example(ConfigRecord({"names": ["a"], "blobs": [10**12]}))
@example(ConfigRecord({"names": [1, 2], "blobs": [b"", b""]}))
@example(ConfigRecord({"names": ["a", "a"], "blobs": [b"", b""]}))
def test_blobs_decode_or_are_refused(record: ConfigRecord) -> None:
    try:
        blobs = wire.blobs_of(record)
    except ProtocolViolation:
        return
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in blobs.items())


# -- masked vectors ------------------------------------------------------------------------
_VECTOR, _LAYOUT = pack(
    {"arrays/w": (np.arange(6.0).reshape(2, 3), 32), "metrics/num-examples": (np.float64(4), 0)}
)


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def _lying_npy(shape: tuple[int, ...]) -> bytes:
    """A .npy header declaring ``shape`` of uint64, with no data behind it."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        out, {"descr": "<u8", "fortran_order": False, "shape": shape}
    )
    return out.getvalue()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


@st.composite
def _layouts(draw) -> str:
    kind = draw(st.sampled_from(("valid", "mutated", "json", "text")))
    if kind == "valid":
        return json.dumps(_LAYOUT)
    if kind == "mutated":
        layout = json.loads(json.dumps(_LAYOUT))
        entry = layout[draw(st.integers(0, len(layout) - 1))]
        entry[draw(st.integers(0, 2))] = draw(JSON)
        return json.dumps(layout)
    if kind == "json":
        return json.dumps(draw(JSON))
    return draw(st.text(max_size=30))


@st.composite
def _arrays(draw) -> Array:
    kind = draw(st.sampled_from(("valid", "numpy", "lying", "bytes")))
    if kind == "valid":
        return Array(_VECTOR)
    if kind == "numpy":
        dtype = draw(st.sampled_from((np.uint64, np.int64, np.float32, np.uint8)))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        return Array(np.zeros(shape, dtype=dtype))
    if kind == "lying":
        shape = tuple(draw(st.lists(st.integers(0, 2**40), min_size=1, max_size=3)))
        return Array(dtype="<u8", shape=shape, stype="numpy.ndarray", data=_lying_npy(shape))
    data = draw(st.binary(max_size=200))
    return Array(dtype="<u8", shape=(len(data) // 8,), stype="numpy.ndarray", data=data)


def _masked_message(array: Array | None, layout: str | None) -> Message:
    content = RecordDict()
    if array is not None:
        content[wire.MASKED] = ArrayRecord({"masked": array})
    if layout is not None:
        content[wire.LAYOUT] = ConfigRecord({"layout": layout})
    request = Message(
        content=RecordDict({"config": ConfigRecord({})}),
        dst_node_id=5,
        message_type=MessageType.TRAIN,
    )
    return Message(content=content, reply_to=request)


@FUZZ
@given(st.none() | _arrays(), st.none() | _layouts())
@example(Array(dtype="<u8", shape=(2**40,), stype="numpy.ndarray", data=_lying_npy((2**40,))), "[]")
@example(Array(_VECTOR), '[["arrays/w", [-2, -3], 32], ["metrics/num-examples", [], 0]]')
@example(Array(_VECTOR), '[["arrays/w", [2, 3], 99], ["metrics/num-examples", [], 0]]')
@example(Array(_VECTOR), "[" * 100_000 + "]" * 100_000)
def test_masked_vector_decodes_or_is_refused(array: Array | None, layout: str | None) -> None:
    try:
        vector, decoded = wire.masked_of(_masked_message(array, layout))
    except ProtocolViolation:
        return
    assert vector.dtype == np.uint64 and vector.ndim == 1
    # A layout that decoded covers the vector exactly: the server's unpack cannot fail.
    sums = unpack(vector, decoded)
    assert sum(v.size for v in sums.values()) == vector.size


@FUZZ
@given(
    garbled(wire.commitments_fields(COMMITMENTS) | wire.commitment_fields(COMMITMENTS["site-1"]))
)
@example(ConfigRecord({"committers": ["a", "a"], "commit-digests": [b""], "commit-signatures": []}))
def test_commitments_decode_or_are_refused(record: ConfigRecord) -> None:
    for decode in (wire.commitments_of, lambda r: {"site-1": wire.commitment_of(r, "site-1")}):
        try:
            commitments = decode(record)
        except ProtocolViolation:
            continue
        for site, c in commitments.items():
            assert c.site == site and isinstance(c.signature, bytes) and len(c.digest) == 32


@FUZZ
@given(garbled(wire.next_fields(RoundId(RID.run, RID.round, "evaluate"), 3)))
def test_next_round_decodes_later_rounds_only(record: ConfigRecord) -> None:
    """An unmask request may name the next round's keys; never this round or an earlier
    one, which would let a server reopen a round."""
    try:
        found = wire.next_of(record, RID)
    except ProtocolViolation:
        return
    if found is not None:
        following, selected = found
        assert following.run == RID.run and type(selected) is int
        order = {"train": 0, "evaluate": 1}[following.kind]
        assert (following.round, order) > (RID.round, 0)  # RID is a training round


@pytest.mark.parametrize(
    ("following", "allowed"),
    [
        (RoundId(RID.run, RID.round, "evaluate"), True),
        (RoundId(RID.run, RID.round + 1, "train"), True),
        (RID, False),
        (RoundId(RID.run, RID.round - 1, "evaluate"), False),
        (RoundId(RID.run, RID.round + 1, "normalisation"), False),
    ],
)
def test_the_next_round_must_be_later(following: RoundId, allowed: bool) -> None:
    record = ConfigRecord(wire.next_fields(following, 3))
    if allowed:
        assert wire.next_of(record, RID) == (following, 3)
    else:
        with pytest.raises(ProtocolViolation, match="as the next round"):
            wire.next_of(record, RID)


def test_valid_records_round_trip() -> None:
    """The fuzzed decoders still decode what the protocol sends."""
    assert wire.round_id_of(wire.round_record(RID, "mask")) == RID
    assert wire.advert_of(wire.advert_record(ADVERTS[1])) == ADVERTS[1]
    assert wire.adverts_of(ConfigRecord(wire.adverts_fields(ADVERTS))) == ADVERTS
    assert wire.blobs_of(ConfigRecord(wire.blobs_fields(BLOBS))) == BLOBS
    assert wire.blobs_of(ConfigRecord(wire.blobs_fields({}))) == {}
    assert wire.commitments_of(ConfigRecord(wire.commitments_fields(COMMITMENTS))) == COMMITMENTS
    one = ConfigRecord(wire.commitment_fields(COMMITMENTS["site-2"]))
    assert wire.commitment_of(one, "site-2") == COMMITMENTS["site-2"]
    assert wire.next_of(ConfigRecord(wire.round_record(RID, "unmask")), RID) is None
    vector, layout_fields = wire.masked_records(_VECTOR, _LAYOUT)
    message = _masked_message(Array(vector), str(layout_fields["layout"]))
    vector, layout = wire.masked_of(message)
    np.testing.assert_array_equal(vector, _VECTOR)
    assert layout == _LAYOUT


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (ConfigRecord({"names": ["a"], "blobs": [10**12]}), "'blobs' must be a list of bytes"),
        (ConfigRecord({"names": ["a"], "blobs": []}), "lists of different lengths \\[1, 0\\]"),
        (ConfigRecord({"names": ["a", "a"], "blobs": [b"", b""]}), "repeats name"),
        (ConfigRecord({"blobs": []}), "no 'names' field"),
    ],
)
def test_bad_blob_records_are_refused_by_name(record, message) -> None:
    with pytest.raises(ProtocolViolation, match=message):
        wire.blobs_of(record)
