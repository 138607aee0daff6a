"""kafka-python calls bounded in time.

kafka-python bounds neither a TLS handshake nor a broker that takes a connection and never
answers (SASL_SSL against a plaintext listener waits forever, whatever the timeouts given).
A call that may wait so runs on a thread of its own; past its time the broker sockets of
its network clients are shut down, which ends those waits with a connection error.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from kafka.errors import KafkaTimeoutError
from kafka.net.compat import KafkaNetClient

T = TypeVar("T")
HANG_UP_SECONDS = 5.0  # for the call to end once its sockets are shut down


class NetworkClients(list):
    """kafka-python's `kafka_client` setting that keeps the network clients it makes, so
    that within() can hang them up."""

    def __call__(self, **settings: Any) -> KafkaNetClient:
        self.append(KafkaNetClient(**settings))
        return self[-1]


def within(
    seconds: float,
    call: Callable[[], T],
    clients: list[KafkaNetClient],
    discard: Callable[[T], Any] | None = None,
) -> T:
    """`call()`, or KafkaTimeoutError after `seconds`, once the sockets of `clients` (the
    list may fill while the call runs) are shut down; a result that comes after that goes
    to `discard`."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # handed to the calling thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name="streamsql-kafka-connect", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for client in clients:
            hang_up(client)
        thread.join(HANG_UP_SECONDS)
        if "value" in outcome and discard is not None:
            discard(outcome["value"])
        raise KafkaTimeoutError(
            f"no answer within {seconds:g} s (does the listener speak the security protocol "
            "configured?)"
        )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def hang_up(client: KafkaNetClient) -> None:
    """From another thread: shut down the client's broker sockets."""
    keys = []
    with contextlib.suppress(RuntimeError):  # the loop changed its socket map meanwhile
        keys = list(client._manager._net._selector.get_map().values())  # no public call
    for key in keys:
        sock = key.fileobj
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
