"""A process that starts a streamed model-API request through the app (Django's test client against
the real views, database and quota backend), reads its first event, says so and waits to be killed.

    python -m tests.faults.stream_child   # env: TIERLAB_FAULT_SECRET, TIERLAB_FAULT_REQUEST_ID

Used by tests/faults/test_killed_stream.py: killed with SIGKILL, it leaves a reservation that nobody
settles, as a web process that crashes mid-stream does.
"""

from __future__ import annotations

import json
import os
import sys
import time

import django


def main() -> None:
    django.setup()
    from django.test import Client

    body = {
        "model": "Llama-3.3-8B-Instruct",
        "messages": [{"role": "user", "content": "Tell me about llamas and their wool."}],
        "stream": True,
    }
    response = Client().post(
        "/v1/chat/completions", json.dumps(body), content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {os.environ['TIERLAB_FAULT_SECRET']}",
        HTTP_X_REQUEST_ID=os.environ["TIERLAB_FAULT_REQUEST_ID"],
    )  # fmt: skip
    print(f"status {response.status_code}", flush=True)
    if response.status_code != 200:
        print(response.content.decode(errors="replace"), flush=True)
        sys.exit(1)
    first = next(iter(response.streaming_content))
    print(f"streaming {first[:60]!r}", flush=True)
    time.sleep(120)  # until killed


if __name__ == "__main__":
    main()
