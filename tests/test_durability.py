"""A full disk stops a query with a clear error and corrupts nothing.

The disk is filled for real, in a subprocess: RLIMIT_FSIZE caps the size of any file the
process writes (with SIGXFSZ ignored, a write past it fails with EFBIG, as one past a full
disk fails with ENOSPC). The engine database's write-ahead log outgrows the cap mid-run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb

FILES, ROWS = 30, 2000
LIMIT_BYTES = 200_000

CHILD = """
import resource, signal, sys
import streamsql

limit = int(sys.argv[1])
if limit:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
con = streamsql.connect("app.db")
cursor = con.cursor()
cursor.execute(
    "CREATE SOURCE IF NOT EXISTS ev (k VARCHAR, v BIGINT) "
    "WITH (connector = 'files', path = 'in', max_files_per_trigger = 1)"
)
cursor.execute(
    "CREATE SINK IF NOT EXISTS totals WITH (connector = 'duckdb', trigger = 'available_now') "
    "AS SELECT k, count(*) AS n, sum(v) AS total FROM ev GROUP BY k EMIT CHANGES"
)
cursor.execute(
    "CREATE SINK IF NOT EXISTS rows_out "
    "WITH (connector = 'parquet', path = 'out', trigger = 'available_now') "
    "AS SELECT k, v FROM ev WHERE v % 10 = 0"
)
failed = False
for name in ("totals", "rows_out"):
    query = con.query(name)
    try:
        query.await_termination(120)
    except streamsql.Error as error:
        failed = True
        last = query.last_progress.batch_id if query.last_progress else None
        print(f"{name} failed after batch {last}: {error}", file=sys.stderr)
con.close()
sys.exit(3 if failed else 0)
"""


def _run(directory: Path, limit: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(limit)],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_full_disk_stops_the_query_clearly_and_a_restart_finishes_exactly(
    tmp_path: Path,
) -> None:
    (tmp_path / "in").mkdir()
    for i in range(FILES):
        lines = (json.dumps({"k": f"key{j % 101}-{i}", "v": i * ROWS + j}) for j in range(ROWS))
        (tmp_path / "in" / f"{i:03d}.json").write_text("\n".join(lines))

    full = _run(tmp_path, LIMIT_BYTES)
    assert full.returncode == 3, full.stderr
    assert "File too large" in full.stderr, full.stderr  # what failed, and where
    assert "app.db.wal" in full.stderr, full.stderr
    assert "failed after batch None" not in full.stderr  # it stopped mid-run, not at start

    freed = _run(tmp_path, 0)
    assert freed.returncode == 0, freed.stderr

    con = duckdb.connect(str(tmp_path / "app.db"), read_only=True)
    try:
        expected = con.execute(
            "SELECT k, count(*), sum(v) FROM read_json_auto(?) GROUP BY k ORDER BY k",
            [str(tmp_path / "in" / "*.json")],
        ).fetchall()
        assert con.execute("SELECT k, n, total FROM totals ORDER BY k").fetchall() == expected
        files = json.loads((tmp_path / "out" / "_manifest.json").read_text())["files"]
        written = con.execute(
            "SELECT v FROM read_parquet(?) ORDER BY v",
            [[str(tmp_path / "out" / name) for name in files]],
        ).fetchall()
        assert written == [(v,) for v in range(0, FILES * ROWS, 10)]
    finally:
        con.close()
    assert not list((tmp_path / "out" / ".staging").iterdir())
