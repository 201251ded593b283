"""The embedded default's broker: kombu's filesystem transport, made to survive a full disk (issue 12,
item 6). ``config/settings.py`` names it (``CELERY_BROKER_TRANSPORT``) whenever the broker URL is
``filesystem://``; Redis or RabbitMQ in production do not use it.

What kombu's own transport does wrong, and what this one does instead:
1. It writes a message straight into its final ``<time>_<uuid>.<queue>.msg`` name. A write that fails
   (the disk is full) leaves a zero-byte or truncated ``.msg`` file, and a consumer can even read one
   still being written. Here the message is written under a hidden temporary name in the same
   folder and renamed into place only once complete (rename is atomic within a folder); a failed write
   removes its temporary file and the producer gets kombu's OperationalError. No partial message is
   ever visible.
2. Its consumer parses whatever it finds: an empty or garbage file raises JSONDecodeError out of the
   worker's consumer loop ("Unrecoverable error"), the worker exits, and every restart eats one more
   bad file the same way. Here a file that is not a message is moved aside into ``corrupt_folder``
   (``var/celery/corrupt/``), logged as an error, and the next file is consumed.
3. It claims a message by moving it to the system temp folder (a copy when that is another file
   system). Here it is claimed by renaming it to a hidden name in its own folder, then read and removed.
4. An exchange table in the control folder left empty by a failed write made every later bind and
   fan-out fail the same way: here it is logged and treated as empty (a consumer rebinds).

5. Its consumer waits in kombu's polling loop: Celery asks it for up to 2 s at a time and checks for a
   shutdown between calls, and the loop sleeps a whole second between polls, so the worker noticed Ctrl-C
   (honcho's SIGTERM) 2-3 s late, which with the rest of the worker's shutdown made `make run` SIGKILL it.
   Here the loop polls every 0.2 s (a task starts sooner too) and returns as soon as the worker is told
   to stop (celery.worker.state.should_stop / should_terminate, set by its signal handlers).

Kept as in kombu: a message is removed from the folder when it is delivered, and the worker holds it
in memory until acknowledged (kombu's virtual transports restore unacknowledged messages on a clean
shutdown, not after kill -9). Messages are not fsynced: a power cut can lose the last ones, as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path
from time import monotonic, sleep

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.transport.virtual import Empty
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

logger = logging.getLogger(__name__)

CLAIMED_PREFIX = ".claimed-"
PART_SUFFIX = ".part"


class Channel(filesystem.Channel):
    @property
    def corrupt_folder(self) -> str:
        folder = self.transport_options.get("corrupt_folder") or os.path.join(
            os.path.dirname(os.path.abspath(self.data_folder_in)), "corrupt"
        )
        return str(folder)

    # --- producing ---------------------------------------------------------------------------------------
    def _put(self, queue, payload, **kwargs):
        """Write ``payload`` under a hidden name, then rename it into the queue (see item 1 above)."""
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # Hidden and with another suffix: the consumer, _size and _purge only see "<...>.<queue>.msg".
        part = os.path.join(self.data_folder_out, f".{name}{PART_SUFFIX}")
        try:
            with open(part, "wb", buffering=0) as file:
                file.write(str_to_bytes(dumps(payload)))
            os.rename(part, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(part)
            raise ChannelError(f"Cannot add a message to {self.data_folder_out!r}: {exc}") from exc

    # --- consuming ---------------------------------------------------------------------------------------
    def _get(self, queue):
        """The oldest message of ``queue``; a file that is not a message is set aside, not raised."""
        wanted = f"{queue}.msg"
        for filename in sorted(os.listdir(self.data_folder_in)):
            if filename.partition(".")[2] != wanted:
                continue
            claimed = os.path.join(self.data_folder_in, CLAIMED_PREFIX + filename)
            try:
                os.rename(os.path.join(self.data_folder_in, filename), claimed)
            except OSError:  # another consumer claimed it first
                continue
            try:
                with open(claimed, "rb") as file:
                    payload = file.read()
            except OSError as exc:
                raise ChannelError(f"Cannot read {claimed!r} from the queue.") from exc
            try:
                message = loads(bytes_to_str(payload))
                if not isinstance(message, dict):
                    raise ValueError(f"a message is a JSON object, not {type(message).__name__}")
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                self._set_aside(claimed, filename, size=len(payload), reason=exc)
                continue
            self._delivered(claimed, filename)
            return message
        raise Empty()

    def _delivered(self, claimed: str, filename: str) -> None:
        if self.store_processed:
            os.replace(claimed, os.path.join(self.processed_folder, filename))
        else:
            os.remove(claimed)

    def _set_aside(self, claimed: str, filename: str, *, size: int, reason: Exception) -> None:
        target = os.path.join(self.corrupt_folder, filename)
        try:
            Path(self.corrupt_folder).mkdir(parents=True, exist_ok=True)
            os.replace(claimed, target)
        except OSError as exc:  # it stays under its hidden claimed name, which no consumer reads again
            target = f"{claimed} (could not be moved: {exc})"
        logger.error(
            "broker: %s (%d bytes) in %s is not a message (%s: %s); set aside as %s",
            filename, size, self.data_folder_in, type(reason).__name__, reason, target,
        )  # fmt: skip

    # --- the control folder (exchange tables) --------------------------------------------------------------
    def get_table(self, exchange):
        try:
            return super().get_table(exchange)
        except ValueError as exc:
            logger.error("broker: the exchange table of %r is unreadable (%s); treated as empty", exchange, exc)
            return []

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        try:
            return super()._queue_bind(exchange, routing_key, pattern, queue)
        except ValueError as exc:
            logger.error("broker: the exchange table of %r is unreadable (%s); written anew", exchange, exc)
            table = [filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")]
            file = self._exchange_file(exchange)
            part = file.with_name(f".{file.name}{PART_SUFFIX}")
            try:
                part.write_bytes(str_to_bytes(dumps(table)))
                os.replace(part, file)
            except OSError as error:
                with contextlib.suppress(OSError):
                    part.unlink()
                raise ChannelError(f"Cannot write {file}") from error


class Transport(filesystem.Transport):
    """kombu's filesystem transport with the Channel above (``driver_type`` stays ``filesystem``).

    A message that cannot be written is a channel error that publishing may retry at once (kombu's
    ``ensure``), not a lost connection: kombu's fallback counts every error as a connection error, and
    its reconnect then published on the closed channel ("'NoneType' object has no attribute 'client'").
    So a producer on a full disk gets kombu's OperationalError, which the APIs answer with 503
    ``broker_unavailable`` (core/dependencies.py)."""

    Channel = Channel
    recoverable_connection_errors = ()
    recoverable_channel_errors = (ChannelError,)
    # kombu's default is 1 s (item 5 above); a poll is one listdir of the queue folder.
    polling_interval = 0.2

    def drain_events(self, connection, timeout=None):
        """kombu's loop (deliver one message, or poll until ``timeout``), ending at once when the worker
        is stopping so Celery's loop sees the shutdown (item 5)."""
        started = monotonic()
        while True:
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            if _worker_stopping() or (timeout is not None and monotonic() - started >= timeout):
                raise TimeoutError()  # socket.timeout, which Celery's loop expects
            sleep(self.polling_interval if timeout is None else min(self.polling_interval, timeout))


def _worker_stopping() -> bool:
    # Set to an exit code (0 included) by the worker's SIGTERM/SIGINT/SIGQUIT handlers, None or False
    # otherwise: identity checks, as celery.worker.state.maybe_shutdown does (0 == False).
    from celery.worker import state

    return any(flag is not None and flag is not False for flag in (state.should_stop, state.should_terminate))
