"""Settings of bench/api_overhead.py's baseline server (configuration a), and of nothing else.

The project's settings unchanged (``config.settings``: the same middleware, database, caches and
logging as the metered servers), except the URLconf: ``bench.baseline_urls`` serves the chat
completion endpoints without key check, quota or usage record. The baseline lives here, in bench/,
so that the production request path has no switch that turns metering off.
"""

from django.core.exceptions import ImproperlyConfigured

from config.settings import *  # noqa: F403 - the project's settings, one override below
from config.settings import PRODUCTION

if PRODUCTION:  # an API with no key check must never serve real traffic
    raise ImproperlyConfigured("bench.settings_baseline is for bench/api_overhead.py only, never TIERLAB_PRODUCTION.")

ROOT_URLCONF = "bench.baseline_urls"
