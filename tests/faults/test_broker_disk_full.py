"""The embedded broker with a real worker: bad message files are set aside while the worker keeps
consuming, and a full file system under the broker is survived (issue 12, item 6).

The worker is ``celery worker`` from this venv on a broker folder of the test's own (core.broker's
transport, as ``make run`` uses it), writing into the test database. The task is the heartbeat: each
one delivered adds 1 to the ``beat`` heartbeat's count, so the count says how many were consumed.
The full-disk case mounts a 1 MiB tmpfs as the broker's ``var/`` folder, which needs root (CI runs as
root); elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kombu.exceptions import OperationalError

from core.dependencies import dependency_failure
from core.models import Heartbeat
from tests.faults.servers_ops import celery_worker, filesystem_broker_app, filesystem_broker_env, tmpfs
from tests.helpers_celery import HEARTBEAT_TASK, subprocess_environment

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

BAD_FILES = {
    "0000_empty.celery.msg": b"",  # what kombu's transport left on a full disk
    "0001_truncated.celery.msg": b'{"body": "eyJ',  # a write cut short
    "0002_garbage.celery.msg": b"\x00\x01\x02 not a message",
}


def _beats() -> int:
    beat = Heartbeat.objects.filter(name="beat").first()
    return beat.count if beat else 0


@pytest.fixture
def broker(tmp_path, monkeypatch):
    # Celery prefers the CELERY_BROKER_URL environment variable (CI's second run: Redis) to an app's own.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    return tmp_path


def test_worker_sets_bad_files_aside_and_consumes_the_good_messages(broker: Path):
    broker_dir = broker / "var" / "celery"
    app = filesystem_broker_app(broker_dir)
    for name, content in BAD_FILES.items():
        (broker_dir / "queue" / name).write_bytes(content)
    for _ in range(3):
        app.send_task(HEARTBEAT_TASK)
    env = filesystem_broker_env(subprocess_environment(broker), broker_dir)

    with celery_worker(env, broker / "worker") as worker:
        worker.wait_for("3 heartbeats", lambda: _beats() >= 3, timeout=60)
        app.send_task(HEARTBEAT_TASK)  # and it goes on consuming
        worker.wait_for("a 4th heartbeat", lambda: _beats() >= 4, timeout=60)
        worker.assert_running()
        log = worker.logs()

    assert _beats() == 4
    assert sorted(os.listdir(broker_dir / "corrupt")) == sorted(BAD_FILES)
    assert [name for name in os.listdir(broker_dir / "queue") if name.endswith(".msg")] == []
    for name in BAD_FILES:
        assert f"broker: {name} (" in log
    assert "Unrecoverable error" not in log


def _fill(folder: Path) -> Path:
    """Write a file in ``folder`` until the file system is full; returns it."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as file:
        for chunk in (64 * 1024, 4096, 512, 1):
            try:
                while True:
                    file.write(b"\0" * chunk)
            except OSError:
                continue
    return filler


def test_worker_survives_a_full_disk_and_consumes_again_once_space_is_freed(broker: Path, report):
    with tmpfs(broker / "var", "1m") as var:
        broker_dir = var / "celery"
        app = filesystem_broker_app(broker_dir)
        env = filesystem_broker_env(subprocess_environment(broker), broker_dir)
        with celery_worker(env, broker / "worker") as worker:  # the worker's log is not on the tmpfs
            app.send_task(HEARTBEAT_TASK)
            worker.wait_for("a heartbeat", lambda: _beats() >= 1, timeout=60)

            filler = _fill(var)
            refused = []
            for _ in range(3):
                try:
                    app.send_task(HEARTBEAT_TASK)
                except OperationalError as error:  # the producer is told, and an API answers 503
                    refused.append(dependency_failure(error).code)
            left = sorted(os.listdir(broker_dir / "queue"))
            # What kombu's own transport left behind at this point: an empty message file.
            (broker_dir / "queue" / "0000_left-by-kombu.celery.msg").write_bytes(b"")
            worker.wait_for(
                "the empty file set aside", lambda: "broker: 0000_left-by-kombu.celery.msg (0 bytes)" in worker.logs()
            )
            worker.assert_running()

            filler.unlink()
            for _ in range(3):
                app.send_task(HEARTBEAT_TASK)
            worker.wait_for("3 more heartbeats", lambda: _beats() >= 4, timeout=60)
            worker.assert_running()
            log = worker.logs()

    report(f"\nfull disk: sends refused {refused}, queue folder then held {left}; 3 sent after freeing")
    assert refused == ["broker_unavailable"] * 3
    assert left == []  # no zero-byte .msg, no .part: nothing a worker could choke on
    assert _beats() == 4
    assert "Unrecoverable error" not in log
