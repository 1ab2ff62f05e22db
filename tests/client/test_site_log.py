"""The site's audit log: a hash chain that verifies, and every kind of tampering caught."""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.task_identity import TaskIdentity
from omegaconf import OmegaConf

from client import site_log
from client.site_log import LOG_FILE, ChainError, SiteLog, SiteLogError, entry_hash
from client.site_log_mod import make_site_log_mod
from client.site_log_verify import read_entries, verify

RUN_ID, SERVER_NODE, SITE_NODE = 11, 1, 5
#: What the site computes and sends: none of it may appear in the log.
SECRET = np.arange(64, dtype=np.float32).reshape(8, 8) * np.float32(0.123456789)
LOSS = 0.987654321


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = RUN_ID, 1, SERVER_NODE


def _cfg(_context: Context):
    return OmegaConf.create({"run_dir": None})


def _context(node_config: dict) -> Context:
    return Context(
        run_id=RUN_ID,
        node_id=SITE_NODE,
        node_config=node_config,
        state=RecordDict(),
        run_config={"experiment": "fed_quick", "overrides": "federation.num_rounds=4"},
    )


def _request(kind: str, server_round: int) -> Message:
    content = RecordDict({"config": ConfigRecord({"server-round": server_round})})
    return Message(content=content, dst_node_id=SITE_NODE, message_type=kind)


def _reply(msg: Message) -> Message:
    server_round = int(msg.content["config"]["server-round"])
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(SECRET * server_round)}),
            "metrics": MetricRecord({"num-examples": 64, "loss": LOSS}),
            "site": ConfigRecord({"name": "hospital-a", "epsilon": 0.5 * server_round}),
        }
    )
    return Message(content=content, reply_to=msg)


def _app(handler=_reply, mods=()) -> ClientApp:
    app = ClientApp(mods=[make_site_log_mod(_cfg)])
    app.train(mods=list(mods))(lambda msg, context: handler(msg))
    app.evaluate()(lambda msg, context: handler(msg))
    return app


def _node(folder: Path) -> dict:
    return {"site-name": "hospital-a", "state-dir": str(folder)}


def _write_log(folder: Path, rounds: int = 4) -> Path:
    """Genesis, then a train and an evaluate reply per round: 1 + 2 * rounds lines."""
    app, context = _app(), _context(_node(folder))
    for r in range(1, rounds + 1):
        app(_request(MessageType.TRAIN, r), context)
        app(_request(MessageType.EVALUATE, r), context)
    return folder / LOG_FILE


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _canonical(entry: dict) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _check_fails_at(path: Path, line: int, words: str) -> ChainError:
    with pytest.raises(ChainError, match=words) as info:
        verify(path)
    assert info.value.line == line and info.value.path == path
    assert f"{path}, line {line}:" in str(info.value)
    return info.value


def test_chain_of_replies_verifies_and_says_what_was_sent(tmp_path: Path) -> None:
    path = _write_log(tmp_path)
    summary = verify(path)
    entries = read_entries(path)
    assert summary.entries == len(entries) == 9 and summary.replies == 8 and summary.errors == 0
    assert summary.site == "hospital-a" and summary.run_ids == (RUN_ID,)
    assert summary.rounds == (1, 2, 3, 4) and summary.last_epsilon == 2.0
    assert summary.head == entries[-1]["hash"] == entry_hash(entries[-1])
    genesis = entries[0]
    assert genesis["kind"] == "genesis" and genesis["prev"] == "0" * 64
    assert [e["seq"] for e in entries] == list(range(9))
    assert all(e["prev"] == p["hash"] for p, e in itertools.pairwise(entries))
    first = entries[1]
    assert first["message_type"] == MessageType.TRAIN and first["round"] == 1
    assert first["to_node"] == SERVER_NODE and first["run_id"] == RUN_ID
    assert first["run_config"] == {
        "experiment": "fed_quick",
        "overrides": "federation.num_rounds=4",
    }
    assert first["epsilon"] == 0.5 and first["delta"] is None
    assert set(first["records"]) == {"arrays", "metrics", "site"}
    assert first["records"]["arrays"]["bytes"] >= SECRET.nbytes


def test_digest_is_flowers_content_id_and_no_data_is_logged(tmp_path: Path) -> None:
    app, context = _app(), _context(_node(tmp_path))
    reply = app(_request(MessageType.TRAIN, 1), context)
    entry = read_entries(tmp_path / LOG_FILE)[-1]
    assert entry["digest"] == reply.content.object_id
    # The server computes the same id from what it receives (Flower's transfer form).
    objects = {}

    def walk(obj):
        objects[obj.object_id] = obj.deflate()
        for child in (obj.children or {}).values():
            walk(child)

    walk(reply.content)
    received = inflate_object_from_contents(reply.content.object_id, objects)
    assert received.object_id == entry["digest"]
    raw = (tmp_path / LOG_FILE).read_bytes()
    for value in SECRET.reshape(-1)[1:]:
        assert repr(float(value)).encode() not in raw
    assert repr(LOSS).encode() not in raw and SECRET.tobytes()[4:20] not in raw
    assert SECRET.tobytes()[4:20].hex().encode() not in raw


def test_log_records_the_reply_after_inner_mods(tmp_path: Path) -> None:
    """The log mod is outermost: it logs what the masking mod made, not the plain reply."""
    plain = []

    def mask(msg, context, call_next):
        reply = call_next(msg, context)
        plain.append(reply.content.object_id)
        masked = RecordDict({"masked": ArrayRecord({"v": Array(np.ones(4, np.uint64))})})
        return Message(content=masked, reply_to=msg)

    reply = _app(mods=[mask])(_request(MessageType.TRAIN, 1), _context(_node(tmp_path)))
    entry = read_entries(tmp_path / LOG_FILE)[-1]
    assert entry["digest"] == reply.content.object_id != plain[0]
    assert set(entry["records"]) == {"masked"}


@pytest.mark.parametrize("line", [1, 2, 5, 9])
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seq", 42),
        ("time", "2020-01-01T00:00:00.000000+00:00"),
        ("site", "hospital-b"),
        ("prev", "f" * 64),
        ("hash", "0" * 64),
        ("round", 7),
        ("epsilon", 0.01),
        ("digest", "e" * 64),
        ("to_node", 99),
    ],
)
def test_editing_any_field_of_any_entry_is_detected(tmp_path, line, field, value) -> None:
    path = _write_log(tmp_path)
    lines = _lines(path)
    entry = json.loads(lines[line - 1])
    entry[field] = value
    lines[line - 1] = _canonical(entry) + b"\n"
    path.write_bytes(b"".join(lines))
    _check_fails_at(path, line, "hash mismatch")


def test_editing_an_entry_and_recomputing_its_hash_breaks_the_next_link(tmp_path) -> None:
    path = _write_log(tmp_path)
    lines = _lines(path)
    entry = json.loads(lines[3])
    entry["epsilon"] = 0.01
    entry["hash"] = entry_hash(entry)
    lines[3] = _canonical(entry) + b"\n"
    path.write_bytes(b"".join(lines))
    _check_fails_at(path, 5, "broken link: prev does not match the hash of line 4")


def test_an_edit_that_keeps_the_values_is_detected(tmp_path) -> None:
    path = _write_log(tmp_path)
    lines = _lines(path)
    lines[2] = lines[2].replace(b'"seq":2', b'"seq": 2')
    path.write_bytes(b"".join(lines))
    _check_fails_at(path, 3, "canonical form")


def test_deleting_a_middle_entry_is_detected(tmp_path) -> None:
    path = _write_log(tmp_path)
    lines = _lines(path)
    del lines[4]
    path.write_bytes(b"".join(lines))
    _check_fails_at(path, 5, "seq 5, expected 4: entries missing")


def test_deleting_the_genesis_header_is_detected(tmp_path) -> None:
    path = _write_log(tmp_path)
    path.write_bytes(b"".join(_lines(path)[1:]))
    _check_fails_at(path, 1, "seq 1, expected 0")


def test_swapping_two_entries_is_detected(tmp_path) -> None:
    path = _write_log(tmp_path)
    lines = _lines(path)
    lines[3], lines[4] = lines[4], lines[3]
    path.write_bytes(b"".join(lines))
    _check_fails_at(path, 4, "seq 4, expected 3")


@pytest.mark.parametrize("cut", [1, 30])
def test_truncating_the_last_line_is_detected(tmp_path, cut) -> None:
    path = _write_log(tmp_path)
    path.write_bytes(path.read_bytes()[:-cut])
    _check_fails_at(path, 9, "truncated last line")


def test_an_appended_forgery_with_a_wrong_prev_is_detected(tmp_path) -> None:
    path = _write_log(tmp_path)
    forged = read_entries(path)[-1] | {"seq": 9, "prev": "a" * 64, "epsilon": 0.0}
    forged["hash"] = entry_hash(forged)
    path.write_bytes(path.read_bytes() + _canonical(forged) + b"\n")
    _check_fails_at(path, 10, "broken link")


def test_a_line_that_is_not_json_is_detected(tmp_path) -> None:
    path = _write_log(tmp_path)
    lines = _lines(path)
    lines[6] = b"{oops\n"
    path.write_bytes(b"".join(lines))
    _check_fails_at(path, 7, "not valid JSON")


def test_empty_log_does_not_verify(tmp_path) -> None:
    path = tmp_path / LOG_FILE
    path.write_bytes(b"")
    with pytest.raises(ChainError, match="empty"):
        verify(path)


def test_an_error_reply_is_logged_with_its_reason_and_the_exception_goes_on(tmp_path) -> None:
    def refuse(msg):
        raise ValueError("site hospital-a: privacy budget exhausted")

    app, context = _app(refuse), _context(_node(tmp_path))
    with pytest.raises(ValueError, match="budget exhausted"):
        app(_request(MessageType.TRAIN, 3), context)
    summary = verify(tmp_path / LOG_FILE)
    assert summary.errors == 1 and summary.replies == 0
    entry = read_entries(tmp_path / LOG_FILE)[-1]
    assert entry["kind"] == "error" and entry["round"] == 3
    assert entry["error"] == {
        "type": "builtins.ValueError",
        "reason": "site hospital-a: privacy budget exhausted",
    }


def test_unwritable_state_folder_stops_the_site_before_any_work(tmp_path) -> None:
    calls = []

    def handler(msg):
        calls.append(msg)
        return _reply(msg)

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SiteLogError, match="cannot be written"):
        _app(handler)(_request(MessageType.TRAIN, 1), _context(_node(blocker / "state")))
    assert calls == []


def test_a_damaged_log_stops_the_site(tmp_path) -> None:
    path = _write_log(tmp_path, rounds=1)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(SiteLogError, match="line 3: truncated last line"):
        _app()(_request(MessageType.TRAIN, 2), _context(_node(tmp_path)))
    path.write_bytes(path.read_bytes()[:-10] + b"X" * 10 + b"\n")
    with pytest.raises(SiteLogError, match="line 3: not valid JSON"):
        _app()(_request(MessageType.TRAIN, 2), _context(_node(tmp_path)))


def test_another_sites_log_is_refused(tmp_path) -> None:
    _write_log(tmp_path, rounds=1)
    node = {"site-name": "hospital-b", "state-dir": str(tmp_path)}
    with pytest.raises(SiteLogError, match="log of site 'hospital-a'"):
        _app()(_request(MessageType.TRAIN, 2), _context(node))


def test_deployed_site_without_state_dir_refuses_and_test_site_warns(tmp_path, caplog) -> None:
    node = {"site-name": "hospital-a", "data-path": str(tmp_path)}
    with pytest.raises(SiteLogError, match="has no 'state-dir'"):
        _app()(_request(MessageType.TRAIN, 1), _context(node))
    with caplog.at_level(logging.WARNING, logger="client.site_log_mod"):
        reply = _app()(_request(MessageType.TRAIN, 1), _context({"site-name": "in-process"}))
    assert not reply.has_error() and "replies are not logged" in caplog.text


def _append_many(path: Path, writer: int, count: int) -> None:
    log = SiteLog(path, "s")
    for i in range(count):
        log.append({"kind": "reply", "round": i, "writer": writer})


def _race(path: Path, writers: int = 4, count: int = 10) -> list[int | None]:
    """``writers`` processes appending at once (Flower runs one ClientApp process per
    message, several at a time); their exit codes."""
    context = multiprocessing.get_context("fork")  # children keep the test's patches
    procs = [context.Process(target=_append_many, args=(path, w, count)) for w in range(writers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    return [proc.exitcode for proc in procs]


@pytest.fixture
def slow_append(monkeypatch):
    """Widens the window between reading the log's tail and appending after it (a slow
    disk or a busy machine), so that writers without the lock collide."""
    real = site_log._now

    def now() -> str:
        time.sleep(0.003)
        return real()

    monkeypatch.setattr(site_log, "_now", now)


def test_the_log_is_shared_safely_by_several_writer_processes(tmp_path, slow_append) -> None:
    assert _race(tmp_path / LOG_FILE) == [0, 0, 0, 0]
    assert verify(tmp_path / LOG_FILE).entries == 4 * 10 + 1


def test_without_the_lock_concurrent_writers_break_the_chain(
    tmp_path, slow_append, monkeypatch
) -> None:
    """The control of the test above: with flock a no-op, the same race forks the chain
    (verify() refuses it) or a writer reads another's half-written line and fails."""
    monkeypatch.setattr(site_log.fcntl, "flock", lambda *args: None)
    codes = _race(tmp_path / LOG_FILE)
    if codes == [0, 0, 0, 0]:
        with pytest.raises(ChainError):
            verify(tmp_path / LOG_FILE)


def test_client_app_logs_its_replies(tmp_path) -> None:
    """The real ClientApp: an evaluate reply lands in <state-dir>/site-log.jsonl."""
    from client.client_app import make_client_app
    from task.config import compose_config
    from task.data.sites import load_site
    from task.models.factory import build_model

    overrides = ["experiment=fed_quick", "secure=none"]
    cfg = compose_config(overrides)
    node = {"partition-id": 0, "num-partitions": 3, "state-dir": str(tmp_path)}
    model = build_model(cfg.model, load_site(cfg, node).splits.in_shape, 2)
    msg = Message(
        content=RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "config": ConfigRecord({"server-round": 2}),
            }
        ),
        dst_node_id=SITE_NODE,
        message_type=MessageType.EVALUATE,
    )
    reply = make_client_app(overrides)(msg, _context(node))
    summary = verify(tmp_path / LOG_FILE)
    assert summary.site == "site-0" and summary.rounds == (2,) and summary.replies == 1
    entry = read_entries(tmp_path / LOG_FILE)[-1]
    assert entry["message_type"] == MessageType.EVALUATE
    assert entry["digest"] == reply.content.object_id


def test_an_anchored_head_catches_entries_cut_off_the_end(tmp_path) -> None:
    path = _write_log(tmp_path)
    head = verify(path).head
    assert verify(path, anchor=head).head == head
    _app()(_request(MessageType.TRAIN, 5), _context(_node(tmp_path)))
    assert verify(path, anchor=head).entries == 10  # later entries keep the anchor
    lines = _lines(path)
    path.write_bytes(b"".join(lines[:-2]))  # a valid chain, but without the anchored head
    assert verify(path).entries == 8
    with pytest.raises(ChainError, match=f"anchored hash {head} is not in the log"):
        verify(path, anchor=head)
