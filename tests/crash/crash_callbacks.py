"""Callback sinks of the crash job: each batch to `out/<sink>/<batch_id>.parquet`.

Idempotent by batch id, as a callback sink must be for exactly-once: the file is written
under a temporary name and renamed over `<batch_id>.parquet`, so a batch passed again after
a crash replaces its file whole, and a kill mid-write leaves only a temporary file (named
`.<batch_id>.<pid>.tmp`, which readers skip). Paths are relative to the working directory
of `streamsql run`. Each call then takes a little longer (LINGER), as a real one would, so
that more kills land between a batch's callback and its commit, the moment after which
the batch is passed again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

LINGER = 0.02  # seconds


def _write(sink: str, batch_id: int, rows: pa.Table) -> None:
    directory = Path("out") / sink
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f".{batch_id}.{os.getpid()}.tmp"
    pq.write_table(rows, temporary)
    os.replace(temporary, directory / f"{batch_id}.parquet")
    time.sleep(LINGER)


def final_callback(batch_id: int, rows: pa.Table) -> None:
    _write("final_callback", batch_id, rows)


def changes_callback(batch_id: int, rows: pa.Table) -> None:
    _write("changes_callback", batch_id, rows)
