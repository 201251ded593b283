"""The embedded broker (core/broker.py) survives a full disk: a message appears only complete, and a
file that is not a message is set aside and logged while the next one is consumed (issue 12, item 6).

These run the transport itself through kombu, in this process; tests/faults/test_broker_disk_full.py
runs a real worker, and fills a real (tmpfs) file system.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from kombu import Connection, Queue

from core.broker import Transport

BAD = {"0_empty": b"", "1_garbage": b"\x00\xffnot json", "2_list": b"[1, 2]"}


def _queue_name(tmp_path: Path) -> str:
    # One queue (and exchange) name per test: kombu keeps declared exchanges per transport class, for
    # the whole process, and would not write a second test's exchange table into its own folder.
    return tmp_path.name.replace("[", "-").replace("]", "")


def _options(root: Path) -> dict:
    options = {
        "data_folder_in": str(root / "queue"),
        "data_folder_out": str(root / "queue"),
        "control_folder": str(root / "control"),
        "processed_folder": str(root / "processed"),
        "corrupt_folder": str(root / "corrupt"),
    }
    for key in ("data_folder_in", "control_folder", "processed_folder"):
        Path(options[key]).mkdir(parents=True, exist_ok=True)
    return options


def _bad_files(queue_name: str) -> dict[str, bytes]:
    return {f"{prefix}.{queue_name}.msg": content for prefix, content in BAD.items()}


def test_kombus_own_transport_stops_at_an_empty_message_file(tmp_path):
    # The fault: what the worker died of ("Unrecoverable error: JSONDecodeError"), once per empty file.
    options = _options(tmp_path)
    name = _queue_name(tmp_path)
    (tmp_path / "queue" / f"0_empty.{name}.msg").write_bytes(b"")
    with (
        Connection("filesystem://", transport_options=options) as conn,
        conn.SimpleQueue(name) as queue,
        pytest.raises(json.JSONDecodeError),
    ):
        queue.get(block=False)


def test_bad_files_are_set_aside_and_logged_and_the_good_messages_consumed(tmp_path, caplog):
    options = _options(tmp_path)
    bad = _bad_files(_queue_name(tmp_path))
    for filename, content in bad.items():
        (tmp_path / "queue" / filename).write_bytes(content)
    caplog.set_level(logging.ERROR, logger="core.broker")
    with (
        Connection("filesystem://", transport=Transport, transport_options=options) as conn,
        conn.SimpleQueue(_queue_name(tmp_path)) as queue,
    ):
        for number in range(3):
            queue.put({"number": number})
        got = []
        for _ in range(3):
            message = queue.get(block=False)
            got.append(message.payload["number"])
            message.ack()
        with pytest.raises(queue.Empty):
            queue.get(block=False)

    assert sorted(got) == [0, 1, 2]  # kombu orders by millisecond, then by a random uuid
    assert sorted(os.listdir(tmp_path / "corrupt")) == sorted(bad)
    assert {(tmp_path / "corrupt" / filename).read_bytes() for filename in bad} == set(bad.values())
    assert os.listdir(tmp_path / "queue") == []
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for filename in bad:
        assert f"{filename} (" in logged and "is not a message" in logged


def test_an_empty_exchange_table_is_rebuilt(tmp_path, caplog):
    # A fan-out exchange's table in the control folder, left empty by a failed write.
    options = _options(tmp_path)
    exchange = _queue_name(tmp_path)
    (tmp_path / "control" / f"{exchange}.exchange").write_bytes(b"")
    caplog.set_level(logging.ERROR, logger="core.broker")
    with Connection("filesystem://", transport=Transport, transport_options=options) as conn:
        channel = conn.channel()
        assert channel.get_table(exchange) == []
        channel._queue_bind(exchange, "", "", "listener")
        assert [entry.queue for entry in channel.get_table(exchange)] == ["listener"]
        channel.close()
    assert "unreadable" in caplog.text


@pytest.mark.parametrize("flag", ["should_stop", "should_terminate"])
def test_waiting_for_messages_ends_as_soon_as_the_worker_is_told_to_stop(tmp_path, monkeypatch, flag):
    # Celery's loop asks the transport for up to 2 s at a time and checks for a shutdown in between;
    # kombu's own loop slept through it (finding 13 of issue 16: Ctrl-C on `make run` noticed 2-3 s late).
    # The signal handlers set the flag to the exit code, 0 included.
    import threading
    import time

    from celery.worker import state

    options = _options(tmp_path)
    name = _queue_name(tmp_path)
    with (
        Connection(transport=Transport, transport_options=options) as conn,
        conn.Consumer(Queue(name), callbacks=[lambda body, message: None]),
    ):
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=0.6)
        assert time.monotonic() - started >= 0.6  # no shutdown: waits the whole timeout

        timer = threading.Timer(0.3, lambda: setattr(state, flag, 0))
        monkeypatch.setattr(state, flag, None)
        started = time.monotonic()
        timer.start()
        try:
            with pytest.raises(TimeoutError):
                conn.drain_events(timeout=5.0)
        finally:
            timer.join()
        assert time.monotonic() - started < 1.5


def test_a_message_is_delivered_within_a_poll(tmp_path):
    import time

    options = _options(tmp_path)
    name = _queue_name(tmp_path)
    with Connection(transport=Transport, transport_options=options) as conn, conn.SimpleQueue(name) as queue:
        queue.put({"n": 1})
        started = time.monotonic()
        assert queue.get(timeout=5).payload == {"n": 1}
        assert time.monotonic() - started < 1.0
