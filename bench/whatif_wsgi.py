"""``config.wsgi.application`` with one step of the metered path removed, for bench/api_overhead.py's
``--what-if`` experiments only: how fast could (b) be without that step? An upper bound for a change
to the app, never a configuration to run.

``BENCH_WHATIF=no-settle``: ``RedisQuotaBackend.settle`` returns at once (no second Redis round trip,
no usage event: the records check is skipped). The ceiling for a path with one Redis round trip per
request, e.g. admitting after the (cheap, simulated) completion with the actual tokens, or recording
the usage event in the reserve script.
"""

from __future__ import annotations

import os

from config.wsgi import application  # noqa: F401 - the WSGI entry point gunicorn serves

WHATIF = os.environ.get("BENCH_WHATIF", "")

if WHATIF == "no-settle":
    from usage.quotas.redis import RedisQuotaBackend

    def _settle_skipped(self, *, reservation, event) -> bool:
        return True

    RedisQuotaBackend.settle = _settle_skipped
elif WHATIF:
    raise RuntimeError(f"unknown BENCH_WHATIF {WHATIF!r}")
