"""``config.wsgi.application`` with one step of the metered path removed, for bench/api_overhead.py's
``--what-if`` experiments only: how fast could (b) be without that step? An upper bound for a change
to the app, never a configuration to run.

``BENCH_WHATIF=no-redis``: ``RedisQuotaBackend.consume`` (the one Redis round trip of a non-streamed
request: check, consume and append the usage event in one Lua script) answers "allowed" in-process,
with every counter at 0. No usage event is written, so api_overhead checks that the run recorded
nothing instead of records == admitted. What is left of (b)'s cost over the baseline is the in-process
part of metering: key check, entitlements, model check, limits, rate-limit headers.

(The earlier experiment, ``no-settle``, measured the path without its second round trip; the path has
since been changed to one round trip per non-streamed request, which is what it argued for.)
"""

from __future__ import annotations

import os

from config.wsgi import application  # noqa: F401 - the WSGI entry point gunicorn serves

WHATIF = os.environ.get("BENCH_WHATIF", "")
CHOICES = ("no-redis",)

if WHATIF == "no-redis":
    from usage.quotas.base import Decision
    from usage.quotas.redis import RedisQuotaBackend

    def _consume_in_process(self, *, team_id, request_id, limits, tokens, event, now, request_id_is_new=False):
        return Decision(allowed=True, used={limit.name: 0 for limit in limits})

    RedisQuotaBackend.consume = _consume_in_process
elif WHATIF:
    raise RuntimeError(f"unknown BENCH_WHATIF {WHATIF!r}: one of {', '.join(CHOICES)}")
