"""Completion of the word before the cursor: keywords, the engine's names, connector options."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from streamsql.checkpoint.log import SCHEMA
from streamsql.engine import SINK_CONNECTORS, SOURCE_CONNECTORS, Engine

# The streaming extension's words (grammar/streamsql.ebnf); DuckDB's come from DuckDB itself.
EXTENSION_KEYWORDS = (
    "APPEND",
    "CHANGES",
    "CLOSE",
    "COMPACT",
    "COMPLETE",
    "DELAY",
    "DESCRIBE",
    "EMIT",
    "EXPLAIN",
    "FINAL",
    "HOPPING",
    "QUERIES",
    "QUERY",
    "SESSION",
    "SHOW",
    "SINK",
    "SINKS",
    "SNAPSHOT",
    "SOURCE",
    "SOURCES",
    "STOP",
    "TUMBLING",
    "WATERMARK",
    "WINDOW",
)

# What may follow a word, offered as soon as the word is followed by a space.
KEYWORDS_AFTER = {
    "emit": ("CHANGES", "FINAL", "SNAPSHOT", "ON WINDOW CLOSE"),
    "window": ("TUMBLING", "HOPPING", "SESSION"),
    "delay": ("OF",),
    "show": ("SOURCES", "SINKS", "QUERIES", "TABLES"),
    "describe": ("QUERY",),
    "stop": ("QUERY",),
    "compact": ("SINK",),
    "create": ("SOURCE", "SINK", "OR REPLACE", "TABLE", "VIEW"),
    "replace": ("SOURCE", "SINK", "TABLE", "VIEW"),
    "drop": ("SOURCE", "SINK", "TABLE", "VIEW"),
}
NAMES_AFTER = {
    "from": "relation",
    "join": "relation",
    "into": "relation",
    "table": "relation",
    "describe": "relation",
    "source": "source",
    "sink": "sink",
    "query": "query",
}

# The keys of WITH (...), each with the connectors that read it.
OPTIONS = {
    option: ", ".join(
        f"{name} {kind}"
        for kind, connectors in (("source", SOURCE_CONNECTORS), ("sink", SINK_CONNECTORS))
        for name, connector in connectors.items()
        if option in connector.OPTIONS
    )
    for connectors in (SOURCE_CONNECTORS, SINK_CONNECTORS)
    for connector in connectors.values()
    for option in connector.OPTIONS
}

WINDOW_COLUMNS = ("window_start", "window_end")  # what WINDOW TUMBLING/HOPPING/SESSION add
KEYWORD = "keyword"

Candidate = tuple[str, str]  # (text, what it is)


class SQLCompleter(Completer):
    """Case-insensitive prefix completion from what the text before the word allows there."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._cursor = engine.cursor()
        duckdb_words = self._cursor.execute("SELECT keyword_name FROM duckdb_keywords()").fetchall()
        self.keywords = sorted({word.upper() for (word,) in duckdb_words} | {*EXTENSION_KEYWORDS})
        self.tables: dict[str, list[str]] = {}
        self.refresh()

    def refresh(self) -> None:
        """Re-read DuckDB's tables and views and their columns: the shell calls this after
        each statement, so completing a word never waits on the database."""
        rows = self._cursor.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema <> ? ORDER BY table_name, ordinal_position",
            [SCHEMA],
        ).fetchall()
        tables: dict[str, list[str]] = {}
        for table, column in rows:
            tables.setdefault(table, []).append(column)
        self.tables = tables

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        before = document.text_before_cursor
        word = re.search(r"\w*$", before).group()
        seen: set[str] = set()
        for text, meta in self._candidates(before[: len(before) - len(word)], bool(word)):
            if text.lower().startswith(word.lower()) and text.lower() not in seen:
                seen.add(text.lower())
                if meta == KEYWORD and word.islower():
                    text = text.lower()
                yield Completion(text, -len(word), display_meta=meta)

    def _candidates(self, context: str, word_begun: bool) -> Iterable[Candidate]:
        """What may come after `context`; everything only once a letter has been typed."""
        options = re.search(r"\bWITH\s*\(([^()]*)$", context, re.IGNORECASE)
        if options:
            at_key = "=" not in options.group(1).rsplit(",", 1)[-1]
            return OPTIONS.items() if at_key else ()
        previous = re.search(r"(\w+)\s+$", context)
        previous_word = previous.group(1).lower() if previous else ""
        if previous_word in KEYWORDS_AFTER or previous_word in NAMES_AFTER:
            keywords = [(k, KEYWORD) for k in KEYWORDS_AFTER.get(previous_word, ())]
            return keywords + self._names(NAMES_AFTER.get(previous_word))
        if not word_begun:
            return ()
        return [
            *self._columns(),
            *self._names("relation"),
            *self._names("sink"),
            *((k, KEYWORD) for k in self.keywords),
        ]

    def _names(self, kind: str | None) -> list[Candidate]:
        if kind == "relation":
            return self._names("source") + [(table, "table") for table in self.tables]
        if kind == "source":
            return [(s.name, "source") for s in self.engine.sources.values()]
        if kind == "sink":
            return [(s.name, "sink") for s in self.engine.sinks.values()]
        if kind == "query":
            return [(q.name, "query") for q in self.engine.queries.values()]
        return []

    def _columns(self) -> list[Candidate]:
        owners: dict[str, list[str]] = {}
        for source in self.engine.sources.values():
            for column in source.column_names:
                owners.setdefault(column, []).append(source.name)
        for table, columns in self.tables.items():
            for column in columns:
                owners.setdefault(column, []).append(table)
        for column in WINDOW_COLUMNS:
            owners.setdefault(column, []).append("WINDOW")
        return [(column, f"column of {', '.join(names)}") for column, names in owners.items()]
