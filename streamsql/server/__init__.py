"""A SQL endpoint on a running engine (the PostgreSQL wire protocol) and the file that
advertises it next to the database, so that other processes find it."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamsql import dbapi
from streamsql.errors import OperationalError
from streamsql.server.pgwire import Endpoint

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def endpoint_file(database: str) -> Path:
    """Where a process serving an engine database says where to connect."""
    return Path(f"{database}.endpoint.json")


def read_endpoint(database: str) -> dict[str, Any] | None:
    """The endpoint a live process advertises for `database` (None: none, or its process
    is gone)."""
    try:
        advertised = json.loads(endpoint_file(database).read_text())
        os.kill(advertised["pid"], 0)  # the process is alive (signal 0 sends nothing)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return advertised


@dataclass(frozen=True)
class ServeOptions:
    """Where and how to serve: port 0 picks a free one (the endpoint file tells which)."""

    host: str = "127.0.0.1"
    port: int = 5432
    password: str | None = None
    allow_writes: bool = False

    @classmethod
    def parse(
        cls, address: str, password_env: str | None = None, allow_writes: bool = False
    ) -> ServeOptions:
        """From '[HOST:]PORT' (the host is 127.0.0.1 unless given) and the name of the
        environment variable that holds the password."""
        host, _, port = address.rpartition(":")
        if not port.isdigit() or not 0 <= int(port) <= 65535:
            raise OperationalError(
                f"Cannot serve on {address!r}: expected [HOST:]PORT, a port 0..65535"
            )
        password = None
        if password_env is not None:
            password = os.environ.get(password_env)
            if not password:
                raise OperationalError(
                    f"--password-env {password_env}: the environment variable is not set or empty"
                )
        return cls(host.strip("[]") or "127.0.0.1", int(port), password, allow_writes)


class Server:
    """The endpoint of a connection's engine, served from a thread, advertised next to a
    file database while it runs."""

    def __init__(self, connection: dbapi.Connection, options: ServeOptions) -> None:
        host, port = options.host, options.port
        if host not in LOOPBACK and options.password is None:
            raise OperationalError(
                f"Serving on {host} needs a password (--password-env VAR): only 127.0.0.1 "
                "is served without one"
            )
        self.database = connection.engine.database
        try:
            self.endpoint = Endpoint(connection, host, port, options.password, options.allow_writes)
        except OSError as error:
            raise OperationalError(f"Cannot serve on {host}:{port}: {error.strerror}") from None
        self.host, self.port = host, self.endpoint.port
        self._thread = threading.Thread(
            target=self.endpoint.serve_forever, name=f"pgwire {host}:{self.port}", daemon=True
        )

    def start(self) -> Server:
        self._thread.start()
        if self.database != ":memory:":
            advertised = {
                "host": self.host,
                "port": self.port,
                "pid": os.getpid(),
                "password": self.endpoint.password is not None,
                "allow_writes": self.endpoint.allow_writes,
            }
            endpoint_file(self.database).write_text(json.dumps(advertised))
        return self

    @property
    def url(self) -> str:
        access = "read-write" if self.endpoint.allow_writes else "read-only"
        return f"postgresql://{self.host}:{self.port} ({access})"

    def close(self) -> None:
        """Stop accepting clients and withdraw the advertisement."""
        if self.database != ":memory:":
            endpoint_file(self.database).unlink(missing_ok=True)
        self.endpoint.shutdown()
        self.endpoint.server_close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["ServeOptions", "Server", "endpoint_file", "read_endpoint"]
