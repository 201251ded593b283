"""A small delaying TCP proxy for fault tests: put it between a client and a real server, and it holds
chosen HTTP requests for a while before passing them on, the way a slow network or a proxy on the way
does. A request the client gave up on (its read timeout) is still delivered when the hold ends, and
the server's answer is read and dropped: the request stays in flight after the client stopped waiting.

Threads, one pair per connection; binds 127.0.0.1 on a free port; ``stop()`` (or leaving the ``with``
block) closes every socket and joins every thread, bounded. It reads just enough HTTP to see where a
request starts on a keep-alive connection (a request line at the start of a chunk from the client:
the clients used here write each request's head in one piece and wait for the answer before the
next), and records each request's line, headers and timing in ``requests``.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

REQUEST_LINE = re.compile(rb"^([A-Z]+) (\S+) HTTP/1\.[01]\r\n")
JOIN_TIMEOUT_SECONDS = 5.0


@dataclass
class SeenRequest:
    """One request that went through the proxy."""

    method: str
    path: str
    headers: dict[str, str]
    received_at: float  # time.monotonic()
    held: bool
    forwarded_at: float | None = None
    answered_at: float | None = None  # the server's answer started arriving


@dataclass
class _Connection:
    client: socket.socket
    upstream: socket.socket
    current: SeenRequest | None = None
    client_gone: threading.Event = field(default_factory=threading.Event)
    answered: threading.Condition = field(default_factory=threading.Condition)


class DelayingProxy:
    """``DelayingProxy(("127.0.0.1", port), hold_seconds=3, hold_if=lambda method, path: ...)``.

    ``hold_if(method, path)`` picks the requests to hold (``hold_seconds`` each at most: ``release()``
    lets every held request go at once, so a test's order of events need not race the clock); change
    ``hold_seconds`` or ``hold_if`` at any time (a request is judged when it arrives). ``linger_seconds``
    bounds how long a connection whose client has gone waits for the server's answer to a held request."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        hold_seconds: float = 0.0,
        hold_if: Callable[[str, str], bool] = lambda method, path: False,
        linger_seconds: float = 10.0,
    ) -> None:
        self.upstream = upstream
        self.hold_seconds = hold_seconds
        self.hold_if = hold_if
        self.linger_seconds = linger_seconds
        self.requests: list[SeenRequest] = []
        self._lock = threading.RLock()  # wait_until holds it while its predicate calls seen()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._released = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    # --- Life cycle ------------------------------------------------------------------------------------

    def __enter__(self) -> DelayingProxy:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        self._spawn(self._accept_loop, "proxy-accept")

    def stop(self) -> None:
        self._stopping.set()
        _close(self._listener)  # shutdown() wakes the accept() blocked in the accept thread
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _close(sock)
        deadline = time.monotonic() + JOIN_TIMEOUT_SECONDS
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"proxy threads still running: {alive}"

    # --- What went through -----------------------------------------------------------------------------

    def seen(self, method: str, path_prefix: str) -> list[SeenRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path.split("?")[0] == path_prefix]

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait (bounded) until ``predicate()`` holds; it is checked whenever a request moves on."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.1))
        return True

    # --- Plumbing --------------------------------------------------------------------------------------

    def release(self) -> None:
        """Let the held requests (and any later one hold_if picks) through now."""
        self._released.set()

    def _hold(self) -> bool:
        """Wait out a hold: True if the proxy is stopping (drop the request), False to forward it."""
        deadline = time.monotonic() + self.hold_seconds
        while not self._released.is_set() and time.monotonic() < deadline:
            if self._stopping.wait(0.05):
                return True
        return self._stopping.is_set()

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            self._track(upstream)
            conn = _Connection(client=client, upstream=upstream)
            self._spawn(self._client_to_upstream, "proxy-c2u", conn)
            self._spawn(self._upstream_to_client, "proxy-u2c", conn)

    def _note(self, change: Callable[[], None]) -> None:
        with self._changed:
            change()
            self._changed.notify_all()

    def _client_to_upstream(self, conn: _Connection) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    chunk = conn.client.recv(65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                match = REQUEST_LINE.match(chunk)
                if match:
                    method, path = match.group(1).decode(), match.group(2).decode()
                    held = self.hold_seconds > 0 and self.hold_if(method, path)
                    seen = SeenRequest(method, path, _headers(chunk), time.monotonic(), held)
                    conn.current = seen
                    self._note(lambda seen=seen: self.requests.append(seen))
                    if held and self._hold():
                        return
                conn.upstream.sendall(chunk)
                if match:
                    self._note(lambda seen=conn.current: setattr(seen, "forwarded_at", time.monotonic()))
            # The client has gone (or closed its side). A request it gave up on has been passed on in
            # full: let the server answer it before the connection is closed, so that it is handled.
            conn.client_gone.set()
            current = conn.current
            if current is not None and current.answered_at is None:
                with conn.answered:
                    conn.answered.wait_for(lambda: current.answered_at is not None, timeout=self.linger_seconds)
        except OSError:
            pass
        finally:
            _close(conn.upstream)
            _close(conn.client)

    def _upstream_to_client(self, conn: _Connection) -> None:
        try:
            while True:
                chunk = conn.upstream.recv(65536)
                if not chunk:
                    break
                current = conn.current
                if current is not None and current.answered_at is None:
                    self._note(lambda current=current: setattr(current, "answered_at", time.monotonic()))
                    with conn.answered:
                        conn.answered.notify_all()
                if not conn.client_gone.is_set():
                    with contextlib.suppress(OSError):
                        conn.client.sendall(chunk)  # a client that gave up gets nothing
        except OSError:
            pass
        finally:
            _close(conn.client)


def _headers(chunk: bytes) -> dict[str, str]:
    head = chunk.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in head)}


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
