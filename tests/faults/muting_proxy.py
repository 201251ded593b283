"""A byte-level TCP proxy for fault tests that can lose what goes through it, one direction at a time:
``mode = "pass"`` forwards both ways; ``"drop_replies"`` forwards what the client sends but drops what
the server answers (a script Redis runs whose answer never arrives); ``"drop_all"`` drops both (a call
that never reaches the server). Threads, one pair per connection, on 127.0.0.1 and a free port;
``stop()`` (or leaving the ``with`` block) closes every socket and joins every thread, bounded."""

from __future__ import annotations

import contextlib
import socket
import threading

JOIN_TIMEOUT_SECONDS = 5.0


class MutingProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> MutingProxy:
        self._spawn(self._accept_loop)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(timeout=JOIN_TIMEOUT_SECONDS)

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                return
            with self._lock:
                self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream, ("drop_all",))
            self._spawn(self._pump, upstream, client, ("drop_all", "drop_replies"))

    def _pump(self, source: socket.socket, target: socket.socket, dropped_in: tuple[str, ...]) -> None:
        while not self._stopped.is_set():
            try:
                chunk = source.recv(65536)
            except OSError:
                return
            if not chunk:
                with contextlib.suppress(OSError):
                    target.shutdown(socket.SHUT_WR)
                return
            if self.mode in dropped_in:
                continue
            try:
                target.sendall(chunk)
            except OSError:
                return
