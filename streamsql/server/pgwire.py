"""The PostgreSQL wire protocol (version 3.0) in front of a running engine, so that psql,
psycopg, JDBC and the dashboards built on them read its tables while its queries run.

The subset clients need, written against PostgreSQL's "Frontend/Backend Protocol" chapter:
startup (SSL and GSS encryption declined), trust or password authentication (SCRAM-SHA-256),
the simple and the extended query protocol (Parse, Bind, Describe, Execute, Close, Flush,
Sync), text and binary results (see `pgtypes`), cancel requests and errors with SQLSTATE codes.
One thread per client connection, each with its own cursor on the engine's database: every
statement outside BEGIN ... COMMIT is its own DuckDB transaction, so it sees committed batches
only.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import itertools
import re
import secrets
import socketserver
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import duckdb
from sqlglot import exp

from streamsql import dbapi, errors
from streamsql.engine.explain import explain
from streamsql.engine.show import describe_query, show
from streamsql.engine.statements import push_query
from streamsql.server import pgtypes
from streamsql.sql import Statement, parse

PROTOCOL_3 = 196608
SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST = 80877103, 80877104, 80877102
SERVER_VERSION = "16.0 (streamsql)"
FETCH_ROWS = 1000  # rows fetched from DuckDB at a time while sending a result

# Session settings of PostgreSQL that clients set when they connect (psycopg, JDBC,
# Grafana): acknowledged, not passed on, since DuckDB has none of them.
CLIENT_SETTINGS = frozenset(
    {
        "application_name",
        "bytea_output",
        "client_encoding",
        "client_min_messages",
        "datestyle",
        "extra_float_digits",
        "intervalstyle",
        "lc_messages",
        "lc_monetary",
        "lc_numeric",
        "lc_time",
        "standard_conforming_strings",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "jit",
    }
)
# psql's \dt and \dn call pg_get_userbyid, which DuckDB's pg_catalog lacks: each session
# defines it (every object is owned by "streamsql") and the qualified calls are pointed at it.
_CATALOG_SHIMS = ("CREATE OR REPLACE TEMP MACRO pg_get_userbyid(id) AS 'streamsql'",)
_SHIMMED = re.compile(r"\bpg_catalog\.(pg_get_userbyid)\s*\(", re.IGNORECASE)
_DEALLOCATE = re.compile(r"\s*DEALLOCATE\s+(?:PREPARE\s+)?\"?(\w+)\"?\s*;?\s*$", re.IGNORECASE)
_SETTING = re.compile(r"\s*(?:SET|RESET)\s+(?:SESSION\s+|LOCAL\s+)?\"?(\w+)\"?", re.IGNORECASE)

# What a read-only endpoint runs: DuckDB statements of these types, and our statements
# that only look (SHOW SINKS, DESCRIBE QUERY, EXPLAIN).
READ_STATEMENTS = frozenset({"SELECT", "TRANSACTION"})

# SQLSTATE codes by exception class, the most specific first (DuckDB's, then ours).
_SQLSTATES: tuple[tuple[type[BaseException], str], ...] = (
    (duckdb.InterruptException, "57014"),  # query_canceled
    (duckdb.ParserException, "42601"),  # syntax_error
    (duckdb.CatalogException, "42P01"),  # undefined_table
    (duckdb.BinderException, "42703"),  # undefined_column
    (duckdb.ConstraintException, "23000"),  # integrity_constraint_violation
    (duckdb.OutOfRangeException, "22003"),  # numeric_value_out_of_range
    (duckdb.ConversionException, "22000"),  # data_exception
    (duckdb.InvalidInputException, "22000"),
    (duckdb.NotImplementedException, "0A000"),  # feature_not_supported
    (duckdb.PermissionException, "42501"),  # insufficient_privilege
    (duckdb.TransactionException, "25000"),  # invalid_transaction_state
    (duckdb.IOException, "58030"),  # io_error
    (duckdb.OutOfMemoryException, "53200"),  # out_of_memory
    (duckdb.InternalException, "XX000"),  # internal_error
    (errors.SQLSyntaxError, "42601"),
    (errors.NotSupportedError, "0A000"),
    (errors.DataError, "22000"),
    (errors.IntegrityError, "23000"),
    (errors.ProgrammingError, "42000"),  # syntax_error_or_access_rule_violation
    (errors.OperationalError, "58000"),  # system_error
    (errors.InternalError, "XX000"),
)


class ProtocolError(Exception):
    """What a client sent breaks the protocol: the connection ends (08P01)."""


class Refused(Exception):
    """A statement this endpoint does not run, with the SQLSTATE that says why."""

    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def sqlstate(error: BaseException) -> str:
    """The SQLSTATE of an error, from DuckDB's exception where ours wraps one."""
    if isinstance(error, Refused):
        return error.sqlstate
    for candidate in (error.__context__, error):
        for kind, code in _SQLSTATES:
            if isinstance(candidate, kind):
                return code
    return "XX000"


def message(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(payload) + 4) + payload


def _cstring(text: str) -> bytes:
    return text.encode() + b"\x00"


def error_response(error: BaseException, severity: str = "ERROR") -> bytes:
    fields = {b"S": severity, b"V": severity, b"C": sqlstate(error), b"M": str(error)}
    body = b"".join(key + _cstring(value) for key, value in fields.items())
    return message(b"E", body + b"\x00")


class Reader:
    """Splits a bound message's payload into the protocol's fields."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def int16(self) -> int:
        (value,) = struct.unpack_from("!h", self.data, self.at)
        self.at += 2
        return value

    def int32(self) -> int:
        (value,) = struct.unpack_from("!i", self.data, self.at)
        self.at += 4
        return value

    def string(self) -> str:
        end = self.data.index(b"\x00", self.at)
        text = self.data[self.at : end].decode()
        self.at = end + 1
        return text

    def bytes(self, count: int) -> bytes:
        value = self.data[self.at : self.at + count]
        self.at += count
        return value


def _parse(sql: str) -> list[Statement]:
    """A client's statements. `DEALLOCATE ALL`, which DuckDB's parser does not take, is
    answered by the endpoint itself, so DuckDB's parser does not judge it."""
    sql = _SHIMMED.sub(r"\1(", sql)
    return parse(sql, stored=_DEALLOCATE.match(sql) is not None)


@dataclass
class Prepared:
    """A parsed statement of the extended protocol."""

    statement: Statement | None  # None: an empty query
    parameter_types: list[int]


@dataclass
class Portal:
    """A bound statement: its parameters, the result formats asked for, and once it runs
    the rows still to send."""

    prepared: Prepared
    parameters: list[Any]
    formats: list[int]
    columns: list[tuple[str, int]] | None = None
    rows: Iterator[list[tuple[Any, ...]]] | None = None
    tag: str = ""
    done: bool = False
    count: int = 0  # rows sent
    pending: list[tuple[Any, ...]] = field(default_factory=list)


class Endpoint(socketserver.ThreadingTCPServer):
    """A PostgreSQL endpoint on an engine connection; `serve_forever` in a thread of its own."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        connection: dbapi.Connection,
        host: str = "127.0.0.1",
        port: int = 5432,
        password: str | None = None,
        allow_writes: bool = False,
    ) -> None:
        self.connection = connection
        self.password = password
        self.allow_writes = allow_writes
        self.sessions: dict[tuple[int, int], Session] = {}
        self.session_ids = itertools.count(1)
        self._sessions_lock = threading.Lock()
        super().__init__((host, port), Session)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def cancel(self, process_id: int, secret: int) -> None:
        """A CancelRequest: interrupt the statement running in the session it names."""
        with self._sessions_lock:
            session = self.sessions.get((process_id, secret))
        if session is not None and session.cursor is not None:
            session.cursor.interrupt()

    def register(self, session: Session) -> tuple[int, int]:
        with self._sessions_lock:
            key = (next(self.session_ids), secrets.randbits(31))
            self.sessions[key] = session
            return key

    def unregister(self, key: tuple[int, int]) -> None:
        with self._sessions_lock:
            self.sessions.pop(key, None)


class Session(socketserver.BaseRequestHandler):
    """One client connection: startup, then messages until Terminate or the socket closes."""

    server: Endpoint

    def setup(self) -> None:
        self.cursor: dbapi.Cursor | None = None
        self.out = bytearray()
        self.status = b"I"  # ReadyForQuery: idle, in a transaction, in a failed one
        self.prepared: dict[str, Prepared] = {}
        self.portals: dict[str, Portal] = {}
        self.key: tuple[int, int] | None = None

    def handle(self) -> None:
        try:
            if not self._startup():
                return
            self.cursor = self.server.connection.cursor()
            for shim in _CATALOG_SHIMS:
                self.cursor.execute(shim)
            self.key = self.server.register(self)
            self.send(message(b"K", struct.pack("!ii", *self.key)))
            self.send(message(b"Z", self.status))
            self.flush()
            self._serve()
        except (ConnectionError, ProtocolError, OSError, struct.error) as error:
            if isinstance(error, ProtocolError):
                with contextlib.suppress(OSError):
                    self.request.sendall(error_response(Refused(str(error), "08P01"), "FATAL"))
        finally:
            if self.key is not None:
                self.server.unregister(self.key)
            if self.cursor is not None:
                with contextlib.suppress(errors.Error):
                    self.cursor.close()

    # -- bytes in and out --------------------------------------------------------------------

    def receive(self, count: int) -> bytes:
        data = bytearray()
        while len(data) < count:
            chunk = self.request.recv(count - len(data))
            if not chunk:
                raise ConnectionResetError("the client closed the connection")
            data += chunk
        return bytes(data)

    def send(self, data: bytes) -> None:
        self.out += data
        if len(self.out) > 1 << 16:
            self.flush()

    def flush(self) -> None:
        if self.out:
            self.request.sendall(self.out)
            self.out.clear()

    # -- startup and authentication -----------------------------------------------------------

    def _startup(self) -> bool:
        """Negotiate until a StartupMessage authenticates (True) or the connection is done."""
        while True:
            (length,) = struct.unpack("!i", self.receive(4))
            if not 8 <= length <= 10_000:
                raise ProtocolError(f"invalid startup packet length {length}")
            body = self.receive(length - 4)
            (code,) = struct.unpack_from("!i", body)
            if code in (SSL_REQUEST, GSSENC_REQUEST):
                self.request.sendall(b"N")  # no encryption: the client goes on in the clear
                continue
            if code == CANCEL_REQUEST:
                self.server.cancel(*struct.unpack_from("!ii", body, 4))
                return False
            if code >> 16 != 3:
                raise ProtocolError(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}")
            parts = body[4:].split(b"\x00")
            options = dict(zip(parts[0:-1:2], parts[1::2], strict=False))
            user = options.get(b"user", b"").decode()
            if not self._authenticate(user):
                return False
            self.send(message(b"R", struct.pack("!i", 0)))
            settings = {
                "server_version": SERVER_VERSION,
                "server_encoding": "UTF8",
                "client_encoding": "UTF8",
                "DateStyle": "ISO, MDY",
                "IntervalStyle": "postgres",
                "TimeZone": "UTC",
                "integer_datetimes": "on",
                "standard_conforming_strings": "on",
                "is_superuser": "off",
                "session_authorization": user,
                "application_name": options.get(b"application_name", b"").decode(),
            }
            for name, value in settings.items():
                self.send(message(b"S", _cstring(name) + _cstring(value)))
            return True

    def _read_password_message(self) -> bytes:
        kind = self.receive(1)
        (length,) = struct.unpack("!i", self.receive(4))
        if kind != b"p" or not 4 <= length <= 10_000:
            raise ProtocolError("expected a password message")
        return self.receive(length - 4)

    def _authenticate(self, user: str) -> bool:
        """SCRAM-SHA-256 when a password is set (RFC 5802/7677, as PostgreSQL does it)."""
        password = self.server.password
        if password is None:
            return True
        self.request.sendall(
            message(b"R", struct.pack("!i", 10) + _cstring("SCRAM-SHA-256") + b"\x00")
        )
        reader = Reader(self._read_password_message())
        mechanism = reader.string()
        size = reader.int32()
        first = reader.bytes(size).decode()
        if mechanism != "SCRAM-SHA-256" or not first.startswith(("n,", "y,")):
            raise ProtocolError("SCRAM-SHA-256 without channel binding is what this server speaks")
        bare = first.split(",", 2)[2]
        client_nonce = dict(part.split("=", 1) for part in bare.split(","))["r"]
        salt, iterations = secrets.token_bytes(16), 4096
        nonce = client_nonce + base64.b64encode(secrets.token_bytes(18)).decode()
        server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i={iterations}"
        self.request.sendall(message(b"R", struct.pack("!i", 11) + server_first.encode()))
        final = self._read_password_message().decode()
        without_proof, proof_text = final.rsplit(",p=", 1)
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        auth_message = f"{bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = base64.b64decode(proof_text)
        recovered = bytes(a ^ b for a, b in zip(proof, signature, strict=False))
        fields = dict(part.split("=", 1) for part in without_proof.split(","))
        if fields.get("r") != nonce or not hmac.compare_digest(
            hashlib.sha256(recovered).digest(), stored_key
        ):
            refusal = Refused(f'password authentication failed for user "{user}"', "28P01")
            self.request.sendall(error_response(refusal, "FATAL"))
            return False
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        verifier = base64.b64encode(hmac.digest(server_key, auth_message, "sha256")).decode()
        self.send(message(b"R", struct.pack("!i", 12) + f"v={verifier}".encode()))
        return True

    # -- messages ------------------------------------------------------------------------------

    def _serve(self) -> None:
        failed = False  # an error in the extended protocol: skip messages until Sync
        while True:
            kind = self.receive(1)
            (length,) = struct.unpack("!i", self.receive(4))
            if length < 4:
                raise ProtocolError(f"invalid message length {length}")
            reader = Reader(self.receive(length - 4))
            if kind == b"X":
                return
            if kind == b"Q":
                self._simple_query(reader.string())
                self.send(message(b"Z", self.status))
                self.flush()
                continue
            if kind == b"S":
                failed = False
                self.portals.pop("", None)
                self.send(message(b"Z", self.status))
                self.flush()
                continue
            if kind == b"H":
                self.flush()
                continue
            if failed:
                continue
            try:
                self._extended(kind, reader)
            except Exception as error:  # the client hears of it; the session goes on
                self._failed()
                self.send(error_response(error))
                failed = True

    def _extended(self, kind: bytes, reader: Reader) -> None:
        if kind == b"P":
            name, sql = reader.string(), reader.string()
            oids = [reader.int32() for _ in range(reader.int16())]
            statements = _parse(sql)
            if len(statements) > 1:
                raise Refused("cannot insert multiple commands into a prepared statement", "42601")
            self.prepared[name] = Prepared(statements[0] if statements else None, oids)
            self.send(message(b"1"))
        elif kind == b"B":
            self._bind(reader)
            self.send(message(b"2"))
        elif kind == b"D":
            what, name = reader.bytes(1), reader.string()
            if what == b"S":
                self._describe_statement(self._prepared(name))
            else:
                portal = self._portal(name)
                self._start(portal)
                self.send(self._row_description(portal) if portal.columns else message(b"n"))
        elif kind == b"E":
            portal = self._portal(reader.string())
            self._execute(portal, reader.int32())
        elif kind == b"C":
            what, name = reader.bytes(1), reader.string()
            (self.prepared if what == b"S" else self.portals).pop(name, None)
            self.send(message(b"3"))
        else:
            raise ProtocolError(f"unsupported message type {kind!r} (COPY is not supported)")

    def _prepared(self, name: str) -> Prepared:
        if name not in self.prepared:
            raise Refused(f'prepared statement "{name}" does not exist', "26000")
        return self.prepared[name]

    def _portal(self, name: str) -> Portal:
        if name not in self.portals:
            raise Refused(f'portal "{name}" does not exist', "34000")
        return self.portals[name]

    def _bind(self, reader: Reader) -> None:
        portal, name = reader.string(), reader.string()
        prepared = self._prepared(name)
        formats = [reader.int16() for _ in range(reader.int16())]
        values = []
        for index in range(reader.int16()):
            size = reader.int32()
            data = None if size < 0 else reader.bytes(size)
            binary = _format_of(formats, index) == 1
            oid = prepared.parameter_types[index] if index < len(prepared.parameter_types) else 0
            values.append(pgtypes.decode_parameter(data, oid, binary))
        results = [reader.int16() for _ in range(reader.int16())]
        self.portals[portal] = Portal(prepared, values, results)

    def _describe_statement(self, prepared: Prepared) -> None:
        """ParameterDescription and the columns, found by running the statement with NULL
        parameters under LIMIT 0 (for a read; anything else describes no rows)."""
        statement = prepared.statement
        count = _parameter_count(statement)
        oids = [*prepared.parameter_types, *[pgtypes.TEXT] * count][
            : max(count, len(prepared.parameter_types))
        ]
        oids = [oid or pgtypes.TEXT for oid in oids]
        self.send(message(b"t", struct.pack(f"!h{len(oids)}i", len(oids), *oids)))
        if statement is None or not _is_duckdb_read(statement, self.server.connection):
            self.send(message(b"n"))
            return
        assert self.cursor is not None
        self.cursor.execute(
            f"SELECT * FROM ({statement.text.rstrip(';')}) LIMIT 0", [None] * len(oids)
        )
        portal = Portal(prepared, [], [])
        portal.columns = [(c[0], pgtypes.oid_of(c[1])) for c in self.cursor.description or []]
        self.cursor.fetchall()
        self.send(self._row_description(portal))

    # -- running statements ---------------------------------------------------------------------

    def _simple_query(self, sql: str) -> None:
        try:
            statements = _parse(sql)
        except Exception as error:
            self._failed()
            self.send(error_response(error))
            return
        if not statements:
            self.send(message(b"I"))
            return
        for statement in statements:
            portal = Portal(Prepared(statement, []), [], [])
            try:
                self._start(portal)
                if portal.columns:
                    self.send(self._row_description(portal))
                self._execute(portal, 0)
            except Exception as error:
                self._failed()
                self.send(error_response(error))
                return

    def _failed(self) -> None:
        if self.status == b"T":
            self.status = b"E"

    def _start(self, portal: Portal) -> None:
        """Run the portal's statement unless it ran: its columns and rows are then known."""
        if portal.rows is not None or portal.done:
            return
        statement = portal.prepared.statement
        if statement is None:
            portal.done = True
            return
        setting = _SETTING.match(statement.text)
        if setting and setting.group(1).lower() in CLIENT_SETTINGS:
            portal.tag, portal.done = statement.text.split(None, 1)[0].upper(), True
            return
        deallocate = _DEALLOCATE.match(statement.text)
        if deallocate:  # the protocol's prepared statements, which psycopg drops by SQL
            name = deallocate.group(1)
            if name.upper() == "ALL":
                self.prepared.clear()
            else:
                self.prepared.pop(name, None)
            portal.tag, portal.done = "DEALLOCATE" + " ALL" * (name.upper() == "ALL"), True
            return
        assert self.cursor is not None
        if not self.server.allow_writes:
            _check_read_only(statement, self.server.connection)
        engine = self.server.connection.engine
        if engine.handler(statement) is push_query:
            raise Refused(
                "push queries (a SELECT over a source) are not served over the PostgreSQL "
                "protocol: CREATE SINK ... WITH (connector = 'duckdb') and query its table",
                "0A000",
            )
        self.cursor.execute(statement.text, portal.parameters or None)
        self._track_transaction(statement)
        description = self.cursor.description
        if description:
            portal.columns = [(c[0], pgtypes.oid_of(c[1])) for c in description]
            portal.rows = iter(lambda: self.cursor.fetchmany(FETCH_ROWS), [])
        else:
            portal.tag, portal.done = _tag(statement, self.cursor.rowcount), True

    def _track_transaction(self, statement: Statement) -> None:
        first = statement.text.split(None, 1)[0].upper()
        if first in ("BEGIN", "START"):
            self.status = b"T"
        elif first in ("COMMIT", "END", "ROLLBACK", "ABORT"):
            self.status = b"I"

    def _execute(self, portal: Portal, limit: int) -> None:
        """Send up to `limit` rows (0: all), then CommandComplete or PortalSuspended."""
        self._start(portal)
        if portal.prepared.statement is None:
            self.send(message(b"I"))
            return
        if portal.done and portal.rows is None:
            self.send(message(b"C", _cstring(portal.tag)))
            return
        assert portal.columns is not None and portal.rows is not None
        encoders = []
        for index, (_, oid) in enumerate(portal.columns):
            encoders.append(pgtypes.encoder(oid, _format_of(portal.formats, index) == 1))
        sent = 0
        head = struct.pack("!h", len(encoders))
        while not limit or sent < limit:
            if not portal.pending:
                portal.pending = next(portal.rows, [])
                if not portal.pending:
                    portal.done = True
                    break
            take = portal.pending if not limit else portal.pending[: limit - sent]
            portal.pending = portal.pending[len(take) :]
            for row in take:
                cells = [
                    b"\xff\xff\xff\xff" if v is None else struct.pack("!i", len(e := f(v))) + e
                    for f, v in zip(encoders, row, strict=True)
                ]
                self.send(message(b"D", head + b"".join(cells)))
            sent += len(take)
        portal.count += sent
        if portal.done:
            self.send(message(b"C", _cstring(f"SELECT {portal.count}")))
        else:
            self.send(message(b"s"))

    def _row_description(self, portal: Portal) -> bytes:
        assert portal.columns is not None
        body = struct.pack("!h", len(portal.columns))
        for index, (name, oid) in enumerate(portal.columns):
            fmt = _format_of(portal.formats, index)
            body += _cstring(name) + struct.pack(
                "!ihihih", 0, 0, oid, pgtypes.type_size(oid), -1, fmt
            )
        return message(b"T", body)


def _format_of(formats: list[int], index: int) -> int:
    """The format code of a parameter or column: one code per value, one for all, or none
    (text), as Bind gives them."""
    if len(formats) > 1:
        return formats[index]
    return formats[0] if formats else 0


def _parameter_count(statement: Statement | None) -> int:
    """The highest $n of a statement (PostgreSQL numbers its parameters)."""
    if statement is None:
        return 0
    numbers = [
        int(node.this)
        for node in statement.expression.find_all(exp.Placeholder)
        if str(node.this).isdigit()
    ]
    return max(numbers, default=0)


_EXPLAINED = re.compile(r"\s*EXPLAIN\s+(?:ANALYZE\s+|\(.*?\)\s*)?(.*)", re.IGNORECASE | re.DOTALL)


def _duckdb_kinds(text: str) -> list[str]:
    """DuckDB's statement types in `text`; EXPLAIN ANALYZE runs what it explains, so an
    EXPLAIN counts as the statement it explains."""
    try:
        kinds = [parsed.type.name for parsed in duckdb.extract_statements(text)]
    except (duckdb.Error, ValueError):  # DuckDB's parser does not know it
        return ["UNKNOWN"]
    explained = _EXPLAINED.match(text)
    if kinds == ["EXPLAIN"] and explained and explained.group(1).strip():
        return _duckdb_kinds(explained.group(1))
    return kinds


def _is_duckdb_read(statement: Statement, connection: dbapi.Connection) -> bool:
    return connection.engine.handler(statement) is None and _duckdb_kinds(statement.text) == [
        "SELECT"
    ]


def _check_read_only(statement: Statement, connection: dbapi.Connection) -> None:
    """Refuse (25006) what changes the database or the engine: a read-only endpoint runs
    DuckDB's SELECT (SHOW, DESCRIBE, SUMMARIZE included), EXPLAIN and BEGIN/COMMIT, and our
    SHOW, DESCRIBE QUERY and EXPLAIN."""
    engine = connection.engine
    handler = engine.handler(statement)
    if handler is not None:
        if handler in (show, describe_query, explain, push_query):
            return
    elif set(_duckdb_kinds(statement.text)) <= READ_STATEMENTS:
        return
    first = statement.text.split(None, 1)[0].upper()
    raise Refused(
        f"cannot execute {first} in a read-only endpoint (line {statement.line}); start the "
        "server with --allow-writes to change the database",
        "25006",
    )


def _tag(statement: Statement, rowcount: int) -> str:
    """CommandComplete's tag: 'INSERT 0 3', 'UPDATE 2', 'CREATE TABLE', ..."""
    words = statement.text.split()
    first = words[0].upper()
    count = max(rowcount, 0)
    if first == "INSERT":
        return f"INSERT 0 {count}"
    if first in ("UPDATE", "DELETE", "MERGE", "COPY"):
        return f"{first} {count}"
    if first in ("CREATE", "DROP", "ALTER") and len(words) > 1:
        return f"{first} {words[1].upper()}"
    return first


__all__ = ["Endpoint", "Refused", "sqlstate"]
