"""Deduplication: Spark's dropDuplicates and dropDuplicatesWithinWatermark.

The property: hypothesis draws rows (duplicate keys, out of order, late, on the watermark,
sub-millisecond, NULL keys and NULL event times), splits them into micro-batches (empty
ones included) and restarts the engine at random batch boundaries; both deduplications run
as changelog sinks over one files source, and emit exactly the rows the reference model
(tests/reference_model.py, `deduplicate`) accepts, batch for batch, with the same
watermarks, no-data batches and late rows, and keep exactly the keys it keeps.

STREAMSQL_DEDUP_EXAMPLES sets the examples (200 by default: 2 minutes on the shared 2-core
machine). A crash test (`slow`) SIGKILLs `streamsql run` of both deduplications
STREAMSQL_DEDUP_CRASH_KILLS times (8 by default) and compares with an uninterrupted run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
import reference_model as model
from crash import harness
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_errors import assert_refusal
from test_incremental_properties import (
    JITTER,
    MS,
    SPARK,
    T0,
    EngineRun,
    Row,
    assert_spark_batches,
    iso_micros,
    micros,
    run_engine,
    spark_micros,
)

import streamsql
from streamsql import PlanningError

EXAMPLES = int(os.environ.get("STREAMSQL_DEDUP_EXAMPLES", "200"))
UNIT = 1_000 * MS

# WHERE conjuncts over columns other than the event time, and the rows each keeps: Spark
# pushes them below the watermark, so the rows they remove move no watermark.
FILTERS = {None: lambda row: True, "g IS DISTINCT FROM 1": lambda row: row.g != 1}
DROP_KEYS = (("k",), ("k", "g"), ("k", "ts"), ("ts",), ("g", "ts"))
WITHIN_KEYS = (("k",), ("k", "g"), ("k", "ts"))
SPELLINGS = ("DEDUPLICATE ON", "DISTINCT ON", "ROW_NUMBER")
COLUMNS = ("k", "g", "ts", "x")


@dataclass(frozen=True)
class Case:
    batches: tuple[tuple[Row, ...], ...]
    delay: int | None  # microseconds; None: no watermark
    drop_keys: tuple[str, ...]
    within_keys: tuple[str, ...]
    spelling: str
    where: str | None
    stops: frozenset[int]

    def events(self, keys: tuple[str, ...]) -> list[list[model.Event]]:
        passes = FILTERS[self.where]
        return [
            [
                model.Event(r.row_id, r.ts, tuple(getattr(r, k) for k in keys), passes(r))
                for r in batch
            ]
            for batch in self.batches
        ]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """Few keys, so that duplicates are common; event time drifts forward, rows lag."""
    batches = []
    clock = draw(st.integers(0, 3))
    row_id = 0
    for _ in range(draw(st.integers(1, 6))):
        clock += draw(st.integers(0, 4))
        rows = []
        for _ in range(draw(st.integers(0, 6))):
            ts = None
            if draw(st.integers(0, 19)):
                lag = draw(st.integers(-1, 6))
                ts = T0 + max(clock - lag, 0) * UNIT + draw(st.sampled_from(JITTER))
            k = draw(st.sampled_from(["a", "b", None]))
            rows.append(Row(row_id, k, draw(st.sampled_from([0, 1, None])), ts, row_id))
            row_id += 1
        batches.append(tuple(rows))
    stops = frozenset()
    if len(batches) > 1 and draw(st.booleans()):
        stops = frozenset(draw(st.sets(st.integers(0, len(batches) - 2), max_size=2)))
    delay = draw(st.one_of(st.none(), st.integers(0, 3).map(lambda n: n * UNIT)))
    spelling = draw(st.sampled_from(SPELLINGS if delay is not None else SPELLINGS[:2]))
    drop_keys = draw(st.sampled_from(DROP_KEYS))
    if spelling == "DISTINCT ON" and draw(st.booleans()):
        drop_keys = ("k", "g", "ts", "x")  # the whole row, which no two rows share
    return Case(
        batches=tuple(batches),
        delay=delay,
        drop_keys=drop_keys,
        within_keys=draw(st.sampled_from(WITHIN_KEYS)),
        spelling=spelling,
        where=draw(st.sampled_from(sorted(FILTERS, key=str))),
        stops=stops,
    )


def drop_query(case: Case, source: str) -> str:
    keys = ", ".join(case.drop_keys)
    where = f" WHERE {case.where}" if case.where else ""
    if case.spelling == "DISTINCT ON":
        return f"SELECT DISTINCT ON ({keys}) * FROM {source}{where}"
    if case.spelling == "ROW_NUMBER":
        return (
            f"SELECT k, g, ts, x FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY {keys} "
            f"ORDER BY ts) AS rn FROM {source}{where}) WHERE rn = 1"
        )
    return f"SELECT * FROM {source}{where} DEDUPLICATE ON ({keys})"


def within_query(case: Case, source: str) -> str:
    where = f" WHERE {case.where}" if case.where else ""
    keys = ", ".join(case.within_keys)
    return f"SELECT * FROM {source}{where} DEDUPLICATE ON ({keys}) WITHIN WATERMARK"


def check_sink(name: str, run: EngineRun, outcome: model.DedupOutcome, case: Case) -> None:
    by_id = {row.row_id: row for batch in case.batches for row in batch}
    expected = [
        (batch_id, *(getattr(by_id[row_id], c) for c in COLUMNS))
        for row_id, batch_id in outcome.emitted.items()
    ]
    at = {column: index for index, column in enumerate(run.columns)}
    actual = [(row[at["_batch_id"]], *(micros(row[at[c]]) for c in COLUMNS)) for row in run.rows]
    assert sorted(actual, key=repr) == sorted(expected, key=repr), name
    assert [
        (p.batch_id, p.no_data_batch, p.num_input_rows, p.num_late_rows, p.num_null_event_times)
        for p in run.progress
    ] == [
        (
            b.batch_id,
            b.no_data,
            b.num_input_rows,
            b.num_late_rows,
            b.num_null_event_times,
        )
        for b in outcome.batches
    ], name
    if case.delay is not None:
        assert [(iso_micros(p.watermark), iso_micros(p.late_threshold)) for p in run.progress] == [
            (b.watermark, b.late_threshold) for b in outcome.batches
        ], name
    state_keys = [c for c in run.state_columns if c.startswith("key")]
    remembered = {
        tuple(micros(row[run.state_columns.index(c)]) for c in state_keys): row[-1]
        for row in run.state
    }
    assert len(remembered) == len(run.state), name
    assert remembered == {
        tuple(micros(v) for v in key): expiry for key, expiry in outcome.state.items()
    }, name


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases())
def test_deduplication_matches_reference(tmp_path_factory: pytest.TempPathFactory, case: Case):
    directory = tmp_path_factory.mktemp("dedup")
    queries = {"drop": drop_query}
    if case.delay is not None:
        queries["within"] = within_query
    runs = run_engine(
        directory,
        case.batches,
        case.delay or 0,
        list(queries),
        lambda source, name: queries[name](case, source),
        case.stops,
        x_type="BIGINT",
        watermark_in_source=case.delay is not None,
    )
    drop = model.deduplicate(
        case.events(case.drop_keys),
        case.delay,
        key_has_time="ts" in case.drop_keys,
        stops=case.stops,
    )
    check_sink("drop", runs["drop"], drop, case)
    if case.delay is not None:
        within = model.deduplicate(
            case.events(case.within_keys), case.delay, within_watermark=True, stops=case.stops
        )
        check_sink("within", runs["within"], within, case)


# -- the reference model against what Spark emitted ----------------------------------------


@pytest.mark.parametrize(
    "query", ["dedup_append", "dedup_within_wm_append", "dedup_within_wm_user_type_append"]
)
@pytest.mark.parametrize("case", ["c07_boundaries", "c09_sessions"])
def test_reference_model_agrees_with_spark(case: str, query: str) -> None:
    """The model, run on the recorded inputs, gives Spark's batches and emitted rows."""
    spec = json.loads((SPARK / "queries" / f"{query}.json").read_text())["spark"]
    expected = json.loads((SPARK / case / "expected" / f"{query}.json").read_text())
    delay = int(spec["watermark"]["delay"].split()[0]) * 60_000_000
    rows: list[dict] = []
    events = []
    for path in sorted((SPARK / case / "input").iterdir()):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        events.append(
            [
                model.Event(
                    len(rows) + i,
                    spark_micros(row["ts"]),
                    tuple(row[k] for k in spec["keys"]),
                )
                for i, row in enumerate(lines)
            ]
        )
        rows.extend(lines)
    outcome = model.deduplicate(
        events,
        delay,
        within_watermark=spec["kind"] == "dedup_within_watermark",
        key_has_time="ts" in spec["keys"],
    )
    assert_spark_batches(outcome.batches, expected)
    for b in expected["batches"]:
        emitted = [rows[i] for i, batch_id in outcome.emitted.items() if batch_id == b["batch_id"]]
        assert sorted(emitted, key=repr) == sorted(b["rows"], key=repr), f"batch {b['batch_id']}"


# -- refusals, each naming its rule ----------------------------------------------------------

SOURCES = (
    "CREATE SOURCE events (user_id BIGINT, event_type VARCHAR, ts TIMESTAMP, amount DOUBLE, "
    "WATERMARK FOR ts AS ts - INTERVAL '10 minutes') WITH (connector = 'memory')",
    "CREATE SOURCE raw (user_id BIGINT, ts TIMESTAMP) WITH (connector = 'memory')",
    "CREATE TABLE users (user_id BIGINT, name VARCHAR)",
)
NUMBERED = (
    "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY {order}) "
    "AS rn FROM {source}) WHERE {where}"
)


@pytest.mark.parametrize(
    ("sql", "rule", "words", "marker"),
    [
        (
            "SELECT * FROM raw DEDUPLICATE ON (user_id) WITHIN WATERMARK",
            "deduplicate-within-watermark-needs-watermark",
            "needs a watermark",
            "DEDUPLICATE",
        ),
        (
            NUMBERED.format(order="ts DESC", source="events", where="rn = 1"),
            "row-number-deduplication",
            "ORDER BY ... DESC keeps each key's last row",
            "ts DESC",
        ),
        (
            NUMBERED.format(order="amount", source="events", where="rn = 1"),
            "row-number-deduplication",
            "ORDER BY amount must be the event-time column",
            "amount",
        ),
        (
            NUMBERED.format(order="ts", source="raw", where="rn = 1"),
            "row-number-deduplication",
            "(the query has no watermark)",
            "ts)",
        ),
        (
            NUMBERED.format(order="ts", source="events", where="rn = 2"),
            "row-number-deduplication",
            "The outer query needs WHERE rn = 1 and nothing else",
            "rn = 2",
        ),
        (
            "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (ORDER BY ts) AS rn FROM events) "
            "WHERE rn = 1",
            "row-number-deduplication",
            "needs PARTITION BY",
            "ROW_NUMBER",
        ),
        (
            "SELECT * FROM (SELECT user_id, ROW_NUMBER() OVER (PARTITION BY user_id "
            "ORDER BY ts) AS rn FROM events) WHERE rn = 1",
            "row-number-deduplication",
            "selects * and the row number only",
            "user_id",
        ),
        (
            "SELECT DISTINCT event_type, count(*) FROM events GROUP BY event_type",
            "deduplication-with-aggregation",
            "DISTINCT with GROUP BY",
            "event_type",
        ),
        (
            "SELECT DISTINCT user_id FROM events EMIT CHANGES",
            "deduplication-append",
            "EMIT CHANGES does not apply",
            "EMIT",
        ),
        (
            "SELECT * FROM events DEDUPLICATE ON (user_id) EMIT SNAPSHOT",
            "deduplication-append",
            "EMIT SNAPSHOT does not apply",
            "EMIT",
        ),
        (
            "SELECT DISTINCT user_id FROM events DEDUPLICATE ON (user_id)",
            "one-deduplication",
            "A query deduplicates once",
            "DEDUPLICATE",
        ),
        (
            "SELECT DISTINCT ON (count(*)) user_id FROM events",
            "deduplication-key",
            "no aggregates or window functions",
            "count",
        ),
        (
            "SELECT DISTINCT user_id FROM events JOIN users USING (user_id)",
            "deduplication-one-source",
            "DISTINCT over a join or a UNION is not supported directly",
            "user_id",
        ),
        (
            "SELECT * FROM (SELECT * FROM events DEDUPLICATE ON (user_id) "
            "UNION ALL SELECT * FROM events)",
            "stateful-subquery",
            "DEDUPLICATE ON in a subquery, CTE or view over a stream here",
            "DEDUPLICATE",
        ),
        (
            "SELECT * FROM events JOIN users USING (user_id) DEDUPLICATE ON (user_id)",
            "deduplication-one-source",
            "DEDUPLICATE ON over a join",
            "DEDUPLICATE",
        ),
        (
            "SELECT * FROM users DEDUPLICATE ON (user_id)",
            None,
            "Unknown source 'users': a streaming query reads FROM a source",
            "users",
        ),
        (
            "SELECT DISTINCT ON (nope) user_id FROM events",
            None,
            'Invalid deduplication key: Binder Error: Referenced column "nope" not found',
            "nope",
        ),
    ],
)
def test_refusals_name_the_rule_and_the_place(
    sql: str, rule: str | None, words: str, marker: str
) -> None:
    with streamsql.connect() as con:
        for source in SOURCES:
            con.execute(source)
        with pytest.raises(PlanningError) as caught:
            con.execute(sql)
    assert_refusal(caught.value, sql, rule, words, marker)


# -- forms and what EXPLAIN shows ------------------------------------------------------------


def run_files(tmp_path: Path, batches: list[list[dict]], sql: str) -> tuple[list, list]:
    """The rows a changelog sink got, with their batch, and the progress records."""
    inputs = tmp_path / "input"
    inputs.mkdir()
    for number, rows in enumerate(batches):
        text = "".join(json.dumps(row) + "\n" for row in rows)
        (inputs / f"batch_{number:04d}.jsonl").write_text(text)
    with streamsql.connect(str(tmp_path / "engine.db")) as con:
        con.execute(
            "CREATE SOURCE events (user_id BIGINT, event_type VARCHAR, ts TIMESTAMP, "
            "WATERMARK FOR ts AS ts - INTERVAL '10 minutes') WITH (connector = 'files', "
            f"path = '{inputs}', format = 'json', max_files_per_trigger = 1)"
        )
        con.execute(
            "CREATE SINK out WITH (connector = 'duckdb', changelog = true, "
            f"trigger = 'available_now') AS {sql}"
        )
        stream = con.query("out")
        assert stream.await_termination(60)
        rows = con.execute("SELECT * EXCLUDE (_batch_id), _batch_id FROM out").fetchall()
        state = con.execute('SELECT count(*) FROM _streamsql."state_out"').fetchall()
        return sorted(rows, key=repr), [*stream.recent_progress, state[0][0]]


def test_select_distinct_without_the_event_time_keeps_its_keys_and_nothing_is_late(
    tmp_path: Path,
) -> None:
    """SELECT DISTINCT event_type deduplicates the output rows, which have no event time:
    as in Spark (a projection below dropDuplicates), no row is late and no key is forgotten,
    so the row at 00:00, far below the watermark, is still a new key."""
    batches = [
        [{"user_id": 1, "event_type": "a", "ts": "2024-01-01 00:30:00"}],
        [{"user_id": 2, "event_type": "a", "ts": "2024-01-01 00:40:00"}],
        [{"user_id": 3, "event_type": "b", "ts": "2024-01-01 00:00:00"}],
    ]
    rows, progress = run_files(tmp_path, batches, "SELECT DISTINCT event_type FROM events")
    assert rows == [("a", 0), ("b", 2)]
    assert [p.num_late_rows for p in progress[:-1]] == [0, 0, 0]
    assert progress[-1] == 2  # both keys remembered for good


def test_select_distinct_with_the_event_time_drops_late_rows_and_forgets_keys(
    tmp_path: Path,
) -> None:
    batches = [
        [{"user_id": 1, "event_type": "a", "ts": "2024-01-01 00:30:00"}],
        [
            {"user_id": 1, "event_type": "a", "ts": "2024-01-01 00:30:00"},
            {"user_id": 1, "event_type": "a", "ts": "2024-01-01 00:45:00"},
        ],
        [{"user_id": 3, "event_type": "b", "ts": "2024-01-01 00:20:00"}],
    ]
    rows, progress = run_files(tmp_path, batches, "SELECT DISTINCT user_id, ts AS at FROM events")
    assert rows == [(1, dt.datetime(2024, 1, 1, 0, 30), 0), (1, dt.datetime(2024, 1, 1, 0, 45), 1)]
    # L = 00:20 in batch 2: its row at 00:20 is late; W = 00:35 there forgets (1, 00:30)
    assert [p.num_late_rows for p in progress[:-1]] == [0, 0, 1]
    assert progress[-1] == 1


def test_deduplication_of_a_subquery_runs_over_its_rows_as_a_second_operator(
    tmp_path: Path,
) -> None:
    """The filter is an operator of its own (stateless), the deduplication the next one over
    its rows, with the same watermark: Ws 00:21, 00:25, 00:40, 00:45 after batches 0-3."""
    at = "2024-01-01 00:{}:00".format
    batches = [
        [
            {"user_id": 1, "event_type": "a", "ts": at(30)},
            {"user_id": 1, "event_type": "x", "ts": at(31)},
            {"user_id": 2, "event_type": "a", "ts": at(31)},
        ],
        # u1 is in state until 00:40; u3 is new (L = the epoch), forgotten at 00:20 <= 00:21
        [
            {"user_id": 1, "event_type": "a", "ts": at(35)},
            {"user_id": 3, "event_type": "a", "ts": at(10)},
        ],
        # u4 at 00:20 is at or below L = 00:21: late, counted by the deduplication
        [
            {"user_id": 1, "event_type": "a", "ts": at(50)},
            {"user_id": 4, "event_type": "a", "ts": at(20)},
        ],
        [{"user_id": 1, "event_type": "a", "ts": at(55)}],  # u1 goes after this batch's rows
        [{"user_id": 1, "event_type": "a", "ts": at(56)}],
    ]
    query = (
        "SELECT user_id, ts FROM (SELECT * FROM events WHERE event_type <> 'x') AS e "
        "DEDUPLICATE ON (user_id) WITHIN WATERMARK"
    )
    rows, progress = run_files(tmp_path, batches, query)
    moment = dt.datetime(2024, 1, 1).replace
    emitted = [(1, 30, 0), (2, 31, 0), (3, 10, 1), (1, 56, 4)]
    assert rows == sorted([(u, moment(minute=m), b) for u, m, b in emitted], key=repr)
    assert sum(p.num_late_rows for p in progress[:-1]) == 1
    late = [p.state_operators[0]["num_rows_dropped_by_watermark"] for p in progress[:-1]]
    assert late[:5] == [0, 0, 1, 0, 0]
    assert progress[-1] == 1  # u1 from 00:56; u2 went at 00:41 <= 00:45


def test_explain_shows_the_deduplication_steps() -> None:
    with streamsql.connect() as con:
        con.execute(SOURCES[0])
        text = "\n".join(
            row[0]
            for row in con.execute(
                "EXPLAIN SELECT * FROM events DEDUPLICATE ON (user_id) WITHIN WATERMARK"
            ).fetchall()
        )
    assert "deduplication over source events" in text
    assert "keep each key's first row of the batch, if the key is not in state" in text
    assert "POSITIONAL JOIN" in text and "ANTI JOIN" in text
    assert "forget keys the watermark passed" in text
    assert '"__expires" <= $watermark' in text


# -- exactly-once across SIGKILL -----------------------------------------------------------

CRASH_KILLS = int(os.environ.get("STREAMSQL_DEDUP_CRASH_KILLS", "8"))
CRASH_RUN = ("run", "job.sql", "--db", "app.db", "--trigger", "available_now")
CRASH_JOB = """
CREATE SOURCE events (id BIGINT, k VARCHAR, ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '2 minutes')
WITH (connector = 'files', path = 'data', format = 'json', max_files_per_trigger = 1);
CREATE SINK drops WITH (connector = 'duckdb', changelog = true) AS
SELECT * FROM events DEDUPLICATE ON (id, ts);
CREATE SINK within WITH (connector = 'duckdb', changelog = true) AS
SELECT * FROM events DEDUPLICATE ON (k) WITHIN WATERMARK;
"""


def crash_job(directory: Path, rng: random.Random) -> None:
    """40 files of 50 rows: ids and keys repeat within and across files, late ones too."""
    (directory / "data").mkdir(parents=True)
    (directory / "job.sql").write_text(CRASH_JOB)
    for number in range(40):
        rows = [
            {
                "id": rng.randrange(60),
                "k": f"k{rng.randrange(12)}",
                "ts": f"2024-01-01 00:{max(0, number + rng.randrange(-5, 3)):02d}:00",
            }
            for _ in range(50)
        ]
        text = "".join(json.dumps(row) + "\n" for row in rows)
        (directory / "data" / f"batch_{number:04d}.jsonl").write_text(text)


def sink_rows(directory: Path) -> dict[str, list[tuple]]:
    with duckdb.connect(str(directory / "app.db"), read_only=True) as con:
        return {
            name: con.execute(f"SELECT * FROM {name} ORDER BY ALL").fetchall()
            for name in ("drops", "within")
        }


@pytest.mark.slow
def test_sigkilled_deduplication_resumes_exactly_once(tmp_path: Path) -> None:
    """Killed at random moments and run again, the two deduplications' changelogs (every
    row with its batch id) equal an uninterrupted run's: the keys in state, the sink rows
    and the commit are one transaction."""
    seed = int(os.environ.get("STREAMSQL_CRASH_SEED", random.randrange(1 << 32)))
    rng = random.Random(seed)
    reference = tmp_path / "reference"
    crash_job(reference, random.Random(seed))
    started = time.monotonic()
    proc = harness.spawn(reference, reference / "log.txt", CRASH_RUN)
    proc.wait(120)
    harness.exited(proc, reference / "log.txt", "the reference run")
    duration = time.monotonic() - started
    expected = sink_rows(reference)
    assert len(expected["drops"]) > 100 and len(expected["within"]) > 50

    killed = rounds = 0
    while killed < CRASH_KILLS:  # a round ends when a run finishes before its kill
        rounds += 1
        assert rounds <= CRASH_KILLS, f"seed {seed}: the runs end before the kills"
        crashed = tmp_path / f"crashed_{rounds}"
        crash_job(crashed, random.Random(seed))
        log = crashed / "log.txt"
        while True:
            proc = harness.spawn(crashed, log, CRASH_RUN)
            if killed == CRASH_KILLS:
                proc.wait(120)
            elif harness.wait_for(proc, time.monotonic() + rng.uniform(0.2, duration)) is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(120)
                killed += 1
                continue
            harness.exited(proc, log, "a run after kills")
            break
        assert sink_rows(crashed) == expected, f"seed {seed}, {crashed}"
