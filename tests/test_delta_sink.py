"""The Delta Lake sink: one Delta commit per batch carrying txn(query id, batch id).

The table is read back the way other tools read it (deltalake, pyarrow over the files the
Delta log lists, DuckDB through the sink's view) and compared with a duckdb sink of the same
query; a process SIGKILLed after the Delta commit and before the batch's commit replays the
batch without a second Delta version.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from deltalake import DeltaTable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamsql

ROOT = Path(__file__).resolve().parent.parent
T0 = dt.datetime(2024, 1, 1)

SOURCE = (
    "CREATE SOURCE ev (k VARCHAR, ts TIMESTAMP, v BIGINT, "
    "WATERMARK FOR ts AS ts - INTERVAL '1 minute') "
    "WITH (connector = 'files', path = '{path}', format = 'json', max_files_per_trigger = 1)"
)
QUERIES = {
    "final": "SELECT window_start, window_end, k, count(*) AS n, sum(v) AS total FROM ev "
    "WINDOW TUMBLING (ts, INTERVAL '1 minute') GROUP BY window_start, window_end, k EMIT FINAL",
    "changes": "SELECT k, count(*) AS n, sum(v) AS total, max(ts) AS last_ts FROM ev "
    "GROUP BY k EMIT CHANGES",
    "snapshot": "SELECT k, count(*) AS n, min(v) AS low FROM ev GROUP BY k EMIT SNAPSHOT",
}


def put(directory: Path, name: str, rows: list[dict[str, Any]]) -> None:
    """A JSON-lines file appears whole in the source's directory (written, then renamed)."""
    directory.mkdir(parents=True, exist_ok=True)
    hidden = directory / f".{name}.partial"
    hidden.write_text("".join(json.dumps(row, default=str) + "\n" for row in rows))
    os.replace(hidden, directory / name)


def create_source(con: streamsql.Connection, tmp_path: Path) -> None:
    """The files source `ev` over tmp_path/in (which a files source needs to exist)."""
    (tmp_path / "in").mkdir(exist_ok=True)
    con.execute(SOURCE.format(path=tmp_path / "in"))


def pipeline(con: streamsql.Connection, tmp_path: Path, mode: str, **options: Any) -> Path:
    """The files source `ev`, a delta sink `out` and a duckdb sink `ref` of one query."""
    out = tmp_path / "delta"
    create_source(con, tmp_path)
    extra = "".join(f", {key} = '{value}'" for key, value in options.items())
    con.execute(
        f"CREATE SINK out WITH (connector = 'delta', path = '{out}'{extra}) AS {QUERIES[mode]}"
    )
    con.execute(f"CREATE SINK ref WITH (connector = 'duckdb') AS {QUERIES[mode]}")
    return out


def caught_up(con: streamsql.Connection) -> None:
    for name in ("out", "ref"):
        con.query(name).process_all_available(timeout=60)


def delta_rows(path: Path) -> Counter[tuple[Any, ...]]:
    """The table's rows read by deltalake, timestamps as the naive UTC the query emits."""
    table = DeltaTable(str(path)).to_pyarrow_table()
    return Counter(tuple(_naive(v) for v in row.values()) for row in table.to_pylist())


def _naive(value: Any) -> Any:
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def rows(con: Any, sql: str) -> Counter[tuple[Any, ...]]:
    return Counter(con.execute(sql).fetchall())


def commits(path: Path) -> list[dict[str, Any]]:
    """Each Delta commit's actions by kind ({'txn': [...], 'add': [...], ...}), in order."""
    found = []
    for entry in sorted((path / "_delta_log").glob("*.json")):
        actions: dict[str, Any] = {}
        for line in entry.read_text().splitlines():
            for kind, action in json.loads(line).items():
                actions.setdefault(kind, []).append(action)
        found.append(actions)
    return found


def batch_versions(path: Path) -> list[tuple[str, int]]:
    """(app id, version) of every txn action in the log, one per commit that has one."""
    return [
        (txn["appId"], txn["version"]) for commit in commits(path) for txn in commit.get("txn", [])
    ]


# -- read back ------------------------------------------------------------------------------------


def test_final_windows_are_read_back_with_deltalake_pyarrow_and_the_view(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    out = pipeline(con, tmp_path, "final")
    put(tmp_path / "in", "1.json", [{"k": "a", "ts": T0, "v": 1}, {"k": "b", "ts": T0, "v": 2}])
    put(tmp_path / "in", "2.json", [{"k": "a", "ts": T0 + dt.timedelta(seconds=30), "v": 2**60}])
    put(tmp_path / "in", "3.json", [{"k": "a", "ts": T0 + dt.timedelta(minutes=3), "v": 3}])
    caught_up(con)
    expected = Counter(
        {
            (T0, T0 + dt.timedelta(minutes=1), "a", 2, 2**60 + 1): 1,
            (T0, T0 + dt.timedelta(minutes=1), "b", 1, 2): 1,
        }
    )
    assert rows(con, "SELECT * FROM ref") == expected
    assert rows(con, "SELECT * FROM out") == expected  # the view, in the query's types
    assert con.execute("DESCRIBE out").fetchall() == con.execute("DESCRIBE ref").fetchall()
    assert delta_rows(out) == expected  # HUGEINT sums exact: written as DECIMAL(38, 0)
    table = DeltaTable(str(out))
    files = ds.dataset(table.file_uris(), format="parquet").to_table()  # pyarrow, no deltalake
    assert sorted(files.column("total").to_pylist()) == [2, 2**60 + 1]
    # Spark reads it: protocol 1/2, no table features; timestamps are Delta `timestamp`.
    protocol = table.protocol()
    assert (protocol.min_reader_version, protocol.min_writer_version) == (1, 2)
    assert protocol.reader_features is None and protocol.writer_features is None
    assert str(table.schema().fields[0].type) == 'PrimitiveType("timestamp")'
    # Version 0 creates the table; then one version per batch with rows, carrying its txn.
    query_id = con.query("out").id
    log = commits(out)
    assert "metaData" in log[0] and "txn" not in log[0]
    assert [c["txn"] for c in log[1:]] == [
        [{"appId": query_id, "version": batch}]
        for batch in sorted(b for _, b in batch_versions(out))
    ]
    (last,) = con.execute(
        "SELECT max(batch_id) FROM _streamsql.commits WHERE query = 'out'"
    ).fetchone()
    assert last == 3  # three files, then a batch without data that closes the first minute
    assert len(log) == 2  # only that batch emitted rows
    assert table.transaction_version(query_id) == 3


def test_changes_merge_on_the_keys_with_null_keys_and_snapshot_overwrites(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    out = pipeline(con, tmp_path, "changes")
    con.execute(
        f"CREATE SINK snap WITH (connector = 'delta', path = '{tmp_path / 'snap'}') AS "
        f"{QUERIES['snapshot']}"
    )
    batches = [
        [{"k": "a", "ts": T0, "v": 1}, {"k": None, "ts": T0, "v": 5}],
        [{"k": "a", "ts": T0, "v": 2}],
        [{"k": None, "ts": T0, "v": 7}, {"k": "b", "ts": T0, "v": -1}],
    ]
    for i, batch in enumerate(batches):
        put(tmp_path / "in", f"{i}.json", batch)
        caught_up(con)
        con.query("snap").process_all_available(timeout=60)
        assert delta_rows(out) == rows(con, "SELECT * FROM ref")
        assert rows(con, "SELECT * FROM out") == rows(con, "SELECT * FROM ref")
    assert delta_rows(tmp_path / "snap") == Counter(
        {("a", 2, 1): 1, (None, 2, 5): 1, ("b", 1, -1): 1}
    )
    history = DeltaTable(str(out)).history()
    assert [h["operation"] for h in reversed(history)] == ["CREATE TABLE"] + ["MERGE"] * 3
    snap = [h["operation"] for h in reversed(DeltaTable(str(tmp_path / "snap")).history())]
    assert snap == ["CREATE TABLE"] + ["WRITE"] * 3
    assert [c.get("remove") is not None for c in commits(tmp_path / "snap")[1:]] == [
        False,
        True,
        True,
    ]  # each snapshot replaces the last


def test_changelog_appends_every_change_with_its_batch_id(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    out = pipeline(con, tmp_path, "changes", changelog="true")
    put(tmp_path / "in", "1.json", [{"k": "a", "ts": T0, "v": 1}])
    put(tmp_path / "in", "2.json", [{"k": "a", "ts": T0, "v": 2}])
    caught_up(con)
    assert sorted(delta_rows(out)) == [("a", 1, 1, T0, 0), ("a", 2, 3, T0, 1)]
    assert con.execute("SELECT k, n, _batch_id FROM out ORDER BY 3").fetchall() == [
        ("a", 1, 0),
        ("a", 2, 1),
    ]


# -- restarts and replays -------------------------------------------------------------------------

EVENT = st.fixed_dictionaries(
    {
        "k": st.sampled_from(["a", "b", "c", None]),
        "ts": st.integers(0, 400).map(lambda s: T0 + dt.timedelta(seconds=s)),
        "v": st.integers(-5, 5) | st.none(),
    }
)
BATCHES = st.lists(st.tuples(st.lists(EVENT, max_size=6), st.booleans()), min_size=1, max_size=6)


@settings(
    max_examples=int(os.environ.get("STREAMSQL_PROPERTY_EXAMPLES", "64")) // 8 + 2,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(mode=st.sampled_from(sorted(QUERIES)), batches=BATCHES)
def test_the_delta_table_equals_the_duckdb_sink_across_batches_and_restarts(
    tmp_path_factory: pytest.TempPathFactory, mode: str, batches: list[tuple[list[Any], bool]]
) -> None:
    """Random batches, the engine closed and reopened after some: the Delta table (and the
    view) hold the duckdb sink's rows, and every batch has at most one Delta version."""
    tmp_path = tmp_path_factory.mktemp("delta")
    db = str(tmp_path / "app.db")
    con = streamsql.connect(db)
    out = pipeline(con, tmp_path, mode, compact_every=3)
    try:
        for i, (events, restart) in enumerate(batches):
            put(tmp_path / "in", f"{i:03d}.json", events)
            caught_up(con)
            if restart:
                con.close()
                con = streamsql.connect(db)
        caught_up(con)
        expected = rows(con, "SELECT * FROM ref")
        assert delta_rows(out) == expected
        assert rows(con, "SELECT * FROM out") == expected
        versions = batch_versions(out)
        assert len(versions) == len(set(versions))
        committed = con.execute(
            "SELECT max(batch_id) FROM _streamsql.commits WHERE query = 'out'"
        ).fetchall()[0][0]
        assert all(batch <= committed for _, batch in versions)
    finally:
        con.close()


JOB = """
CREATE SOURCE ev (k VARCHAR, ts TIMESTAMP, v BIGINT, WATERMARK FOR ts AS ts - INTERVAL '1 minute')
WITH (connector = 'files', path = 'in', format = 'json', max_files_per_trigger = 1);
CREATE SINK out WITH (connector = 'delta', path = 'delta') AS {query};
CREATE SINK ref WITH (connector = 'duckdb') AS {query};
"""


def _run(directory: Path, kill_at: int | None) -> int:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    if kill_at is not None:
        env["STREAMSQL_TEST_KILL_AT"] = str(kill_at)
    command = ["run", "job.sql", "--db", "app.db", "--trigger", "available_now"]
    proc = subprocess.run(
        [sys.executable, "-m", "streamsql.cli", *command],
        cwd=directory,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.decode()[-3000:]
    return proc.returncode


def test_a_batch_replayed_after_a_kill_between_delta_and_duckdb_commits_adds_no_version(
    tmp_path: Path,
) -> None:
    """Each run is SIGKILLed right after its first Delta commit (the sink's kill point),
    before the engine database commits the batch: the next run replays that batch, finds
    txn(query id, batch) in the table and skips the commit, then commits the next batch."""
    (tmp_path / "job.sql").write_text(JOB.format(query=QUERIES["changes"]))
    (tmp_path / "in").mkdir()
    assert _run(tmp_path, None) == 0  # the sinks, no input yet: no batch
    for i in range(3):
        minute = T0 + dt.timedelta(minutes=i)
        put(
            tmp_path / "in",
            f"{i}.json",
            [{"k": "a", "ts": minute, "v": i}, {"k": "b", "ts": minute, "v": 1}],
        )
    kills = 0
    while _run(tmp_path, 1) == -signal.SIGKILL:
        kills += 1
        assert kills < 10
        with duckdb.connect(str(tmp_path / "app.db"), read_only=True) as db:
            (committed,) = db.execute(
                "SELECT max(batch_id) FROM _streamsql.commits WHERE query = 'out'"
            ).fetchone()
        versions = [batch for _, batch in batch_versions(tmp_path / "delta")]
        assert versions[-1] == (-1 if committed is None else committed) + 1  # Delta is ahead
        assert len(versions) == len(set(versions))
    assert kills >= 2
    with duckdb.connect(str(tmp_path / "app.db"), read_only=True) as db:
        expected = rows(db, "SELECT * FROM ref")
        assert rows(db, "SELECT * FROM out") == expected
    assert expected
    assert delta_rows(tmp_path / "delta") == expected
    versions = batch_versions(tmp_path / "delta")
    assert len(versions) == len(set(versions))


# -- compaction, schema checks, options -----------------------------------------------------------


def copy_sink(con: streamsql.Connection, tmp_path: Path, options: str = "") -> Path:
    """The files source `ev` and a delta sink `out` of its (k, v); returns the table's path."""
    create_source(con, tmp_path)
    out = tmp_path / "delta"
    con.execute(
        f"CREATE SINK out WITH (connector = 'delta', path = '{out}'{options}) AS "
        "SELECT k, v FROM ev"
    )
    return out


def test_compact_every_optimizes_in_a_commit_of_its_own(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    out = copy_sink(con, tmp_path, ", compact_every = 3")
    for i in range(3):
        put(tmp_path / "in", f"{i}.json", [{"k": "a", "ts": T0, "v": i}])
    con.query("out").process_all_available(timeout=60)
    table = DeltaTable(str(out))
    assert [h["operation"] for h in reversed(table.history())] == [
        "CREATE TABLE",
        "WRITE",
        "WRITE",
        "WRITE",
        "OPTIMIZE",
    ]
    (compacted,) = table.file_uris()
    (view,) = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'out'").fetchone()
    assert os.path.basename(compacted) in view and view.count(".parquet") == 1
    assert "txn" not in commits(out)[-1]  # no batch's version: a replay still sees batch 2
    assert rows(con, "SELECT * FROM out") == Counter({("a", 0): 1, ("a", 1): 1, ("a", 2): 1})
    assert con.execute("COMPACT SINK out").fetchall() == [(0, 0)]


def test_a_table_with_other_columns_is_refused_naming_what_changed(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    out = copy_sink(con, tmp_path)
    put(tmp_path / "in", "1.json", [{"k": "a", "ts": T0, "v": 1}])
    con.query("out").process_all_available(timeout=60)
    with pytest.raises(
        streamsql.ProgrammingError,
        match=r"other columns than the query emits \(v: long in the table, string from the "
        r"query; w: not in the table\)",
    ):
        con.execute(
            f"CREATE SINK out WITH (connector = 'delta', path = '{out}') AS "
            "SELECT k, CAST(v AS VARCHAR) AS v, v AS w FROM ev"
        )
    put(tmp_path / "in", "2.json", [{"k": "b", "ts": T0, "v": 2}])
    con.query("out").process_all_available(timeout=60)  # the old sink keeps running
    assert delta_rows(out) == Counter({("a", 1): 1, ("b", 2): 1})


def test_a_table_deleted_by_hand_stops_the_sink_instead_of_starting_it_anew(
    db_path: str, tmp_path: Path
) -> None:
    con = streamsql.connect(db_path)
    out = copy_sink(con, tmp_path)
    put(tmp_path / "in", "1.json", [{"k": "a", "ts": T0, "v": 1}])
    con.query("out").process_all_available(timeout=60)
    con.close()
    shutil.rmtree(out)
    with pytest.warns(UserWarning, match=r"holds no batch of this query, but batch 0 committed"):
        con = streamsql.connect(db_path)
    try:
        assert "out" not in [row[0] for row in con.execute("SHOW QUERIES").fetchall()]
        assert not out.exists()
    finally:
        con.close()


def test_a_table_with_deletion_vectors_is_refused_the_view_could_not_apply_them(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    DeltaTable.create(
        str(tmp_path / "delta"),
        pa.schema([("k", pa.string()), ("v", pa.int64())]),
        configuration={"delta.enableDeletionVectors": "true"},
    )
    with pytest.raises(streamsql.ProgrammingError, match=r"needs a reader that applies deletion"):
        copy_sink(con, tmp_path)


def test_timestamps_nested_in_lists_and_structs_round_trip_as_timestamp_ntz(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    """Top-level TIMESTAMPs are Delta `timestamp` (protocol 1/2); nested ones need
    `timestamp_ntz`, a reader feature the view reads."""
    create_source(con, tmp_path)
    out = tmp_path / "delta"
    con.execute(
        f"CREATE SINK out WITH (connector = 'delta', path = '{out}') AS "
        "SELECT k, ts, {'t': ts, 'v': v} AS s, [ts, ts] AS l FROM ev"
    )
    put(tmp_path / "in", "1.json", [{"k": "a", "ts": T0, "v": 1}])
    con.query("out").process_all_available(timeout=60)
    row = ("a", T0, {"t": T0, "v": 1}, [T0, T0])
    assert con.execute("SELECT * FROM out").fetchall() == [row]
    table = DeltaTable(str(out))
    assert table.protocol().reader_features == ["timestampNtz"]
    read = table.to_pyarrow_table().to_pylist()
    assert [tuple(_naive(v) for v in r.values()) for r in read] == [row]


def test_a_column_delta_has_no_type_for_is_refused_naming_it(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    create_source(con, tmp_path)
    with pytest.raises(
        streamsql.ProgrammingError, match=r"cannot be a Delta table's: .*Interval.*CAST the column"
    ):
        con.execute(
            f"CREATE SINK out WITH (connector = 'delta', path = '{tmp_path / 'd'}') AS "
            "SELECT k, ts - TIMESTAMP '2024-01-01' AS since FROM ev"
        )
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("", "the delta connector needs path"),
        (
            ", path = 'x', compact_every = '-1'",
            "compact_every = '-1' is not an integer of at least 0",
        ),
        (", path = 'x', target_file_size = 'big'", "target_file_size = 'big' is not a size"),
        (", path = 'x', changelog = 'maybe'", "changelog = 'maybe' is not true or false"),
        (", path = 'x', mode = 'append'", "unknown option 'mode' for connector 'delta'"),
    ],
)
def test_invalid_delta_options_are_refused(
    con: streamsql.Connection, tmp_path: Path, options: str, message: str
) -> None:
    create_source(con, tmp_path)
    with pytest.raises(streamsql.ProgrammingError, match=message):
        con.execute(f"CREATE SINK out WITH (connector = 'delta'{options}) AS SELECT k FROM ev")
