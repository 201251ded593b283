"""WSGI entry point (gunicorn ``config.wsgi:application``).

Production start also checks what settings cannot: that the quota backend's Redis keeps answered
usage (append-only file, appendfsync everysec or always); it refuses to start otherwise
(core/redis_persistence.py).
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

from core.redis_persistence import quota_redis_persistence_enforce  # noqa: E402 (needs Django set up)

quota_redis_persistence_enforce()
