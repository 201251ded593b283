"""Does the Redis behind the quota backend keep what it is told? (issue 12, item 1)

With the Redis quota backend an answered model-API request exists only in Redis (its counters and its
usage event in the stream) until the drain task writes the event into ``UsageRecord``, every 2 s. A
Redis that restarts without persistence forgets those events: requests answered 2xx and never
billed. So production requires the append-only file with ``appendfsync everysec`` (or ``always``):

- ``always``: Redis writes and fsyncs the AOF before it answers; nothing answered is lost.
- ``everysec``: Redis writes the AOF before it answers and fsyncs it once a second. A restart or a
  crash of Redis itself loses nothing (the operating system still holds the written pages); a crash
  of the host or a power cut loses the last second of usage. While an fsync is stalled on a slow disk,
  Redis may hold writes back for up to 2 s, which any crash then loses.
- ``no`` (the OS flushes when it likes, about every 30 s) and RDB snapshots alone lose far more.

Read with ``CONFIG GET append*``. Managed Redis services often disable or rename CONFIG: then AOF is
read from ``INFO persistence`` (``aof_enabled``) and the fsync policy, which INFO does not show,
must be stated by the operator in ``TIERLAB_REDIS_APPENDFSYNC`` (``everysec`` or ``always``) after
checking the service's settings; without it the configuration is refused. ``aof_last_write_status``
must be ``ok``: a Redis that cannot write its AOF (its disk is full) keeps nothing new.

Callers: production start (config/wsgi.py: refuses to start), ``/healthz`` (503 naming the part) and
``manage.py check --deploy`` (tierlab.E013). No Django model and no TierLab app is used here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from core.config_checks import problems_message

logger = logging.getLogger(__name__)

DURABLE_FSYNC = ("everysec", "always")
# Largest window of answered usage a crash can lose, per policy (see the module docstring).
MAX_LOSS = {
    "always": "none",
    "everysec": "none on a Redis restart; 1 s on a host crash or power cut (2 s if the disk stalls)",
}
TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class RedisPersistence:
    """What a Redis said about its persistence. ``problems`` is empty when it is durable enough."""

    appendonly: bool | None
    appendfsync: str | None
    source: str
    problems: list[str] = field(default_factory=list)

    @property
    def durable(self) -> bool:
        return not self.problems

    def report(self) -> dict[str, Any]:
        """For /healthz: what was read, and the usage a crash can lose."""
        return {
            "appendonly": self.appendonly,
            "appendfsync": self.appendfsync,
            "source": self.source,
            "max_loss": MAX_LOSS.get(self.appendfsync or "", "unbounded") if self.appendonly else "unbounded",
            "problems": self.problems,
        }


def _refused(error: redis.ResponseError) -> bool:
    text = str(error).lower()
    return "unknown command" in text or "noperm" in text or "no permissions" in text


def redis_persistence_read(client: redis.Redis, *, declared_appendfsync: str = "") -> RedisPersistence:
    """Read ``client``'s persistence settings (see the module docstring). Raises redis-py's
    ConnectionError/TimeoutError if Redis does not answer."""
    info = client.info("persistence")
    try:
        config = client.config_get("append*")
    except redis.ResponseError as error:
        if not _refused(error):
            raise
        config = None
    problems: list[str] = []
    if config is not None:
        source = "CONFIG GET"
        appendonly = str(config.get("appendonly", "no")).lower() == "yes"
        appendfsync = str(config.get("appendfsync", "")).lower() or None
    else:
        declared = declared_appendfsync.strip().lower()
        source = "INFO persistence + TIERLAB_REDIS_APPENDFSYNC" if declared else "INFO persistence"
        appendonly = str(info.get("aof_enabled", "0")) == "1"
        appendfsync = declared or None
        if appendonly and not declared:
            problems.append(
                "CONFIG is disabled on this Redis, so its appendfsync policy cannot be read: check it in the "
                "service's settings and state it in TIERLAB_REDIS_APPENDFSYNC (everysec or always)"
            )
    if not appendonly:
        problems.append(
            "the append-only file is off (appendonly no): usage answered but not yet drained is lost when "
            "Redis restarts; run Redis with appendonly yes and appendfsync everysec"
        )
    elif appendfsync is not None and appendfsync not in DURABLE_FSYNC:
        problems.append(
            f"appendfsync is {appendfsync!r}: the OS flushes the AOF when it likes (about 30 s of usage lost "
            "on a host crash); use everysec or always"
        )
    if appendonly and str(info.get("aof_last_write_status", "ok")) != "ok":
        problems.append("Redis cannot write its append-only file (aof_last_write_status err: is its disk full?)")
    return RedisPersistence(appendonly=appendonly, appendfsync=appendfsync, source=source, problems=problems)


def redis_persistence_check(url: str, *, declared_appendfsync: str = "") -> RedisPersistence:
    """``redis_persistence_read`` on a connection of its own to ``url``, with short timeouts (a probe
    must not hang on a stalled Redis), closed afterwards."""
    client = redis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=TIMEOUT_SECONDS, socket_timeout=TIMEOUT_SECONDS
    )
    try:
        return redis_persistence_read(client, declared_appendfsync=declared_appendfsync)
    finally:
        client.close()


def quota_redis_persistence() -> RedisPersistence | None:
    """The configured quota backend's Redis persistence, or None when the backend is not Redis."""
    if settings.TIERLAB_QUOTA_BACKEND != "redis":
        return None
    return redis_persistence_check(settings.REDIS_URL, declared_appendfsync=settings.TIERLAB_REDIS_APPENDFSYNC)


def quota_redis_persistence_enforce() -> None:
    """At start, where persistence is required (production): refuse with the one production message
    if the quota backend's Redis is not durable. A Redis that does not answer at start is logged and
    let be: the node starts, and /healthz answers 503 until Redis answers and is durable."""
    if not settings.TIERLAB_REDIS_PERSISTENCE_REQUIRED:
        return
    try:
        state = quota_redis_persistence()
    except (redis.ConnectionError, redis.TimeoutError) as error:
        logger.warning("cannot check the quota backend's Redis persistence at start: %s", error)
        return
    if state is not None and state.problems:
        raise ImproperlyConfigured(problems_message([f"REDIS_URL: {problem}" for problem in state.problems]))
