"""A small WSGI app for tests/test_bench_counting.py, served through bench/counting_wsgi.py by the
Procfile's server: one SQL read per request, plus one write on ``/write...``; ``.../refused`` answers
429. Each request holds its thread a moment, so the worker's threads serve requests at once."""

import time

import django

django.setup()

from django.db import connection  # noqa: E402 (after setup)


def application(environ, start_response):
    path = environ["PATH_INFO"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        if path.startswith("/write"):
            cursor.execute("INSERT INTO bench_counted (x) VALUES (1)")
    time.sleep(0.02)
    start_response("429 Too Many Requests" if path.endswith("/refused") else "200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
