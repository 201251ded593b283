"""The Celery application: configured from Django settings (CELERY_* names), tasks autodiscovered."""

import os
from pathlib import Path

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("tierlab")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _make_filesystem_broker_folders(sender: Celery, **kwargs) -> None:
    # kombu's filesystem transport (the embedded default broker) expects its folders to exist.
    if str(sender.conf.broker_url).startswith("filesystem://"):
        for key in ("data_folder_in", "data_folder_out", "control_folder", "processed_folder"):
            folder = (sender.conf.broker_transport_options or {}).get(key)
            if folder:
                Path(folder).mkdir(parents=True, exist_ok=True)
