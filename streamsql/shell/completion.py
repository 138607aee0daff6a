"""Completion of the word before the cursor: keywords, the engine's names, connector options."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from streamsql.checkpoint.schema import SCHEMA
from streamsql.connectors.registry import SINK_CONNECTORS, SOURCE_CONNECTORS
from streamsql.engine import Engine

# The streaming extension's words (grammar/streamsql.ebnf); DuckDB's come from DuckDB itself.
EXTENSION_KEYWORDS = (
    "APPEND",
    "CHANGES",
    "CLOSE",
    "COMPACT",
    "COMPLETE",
    "DEDUPLICATE",
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
    "WITHIN",
)

# What may follow a word, offered as soon as the word is followed by a space.
KEYWORDS_AFTER = {
    "emit": ("CHANGES", "FINAL", "SNAPSHOT", "ON WINDOW CLOSE"),
    "deduplicate": ("ON",),
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

# The connectors of each kind of statement, by name: their OPTIONS are the keys of WITH (...).
CONNECTORS = {"source": SOURCE_CONNECTORS, "sink": SINK_CONNECTORS}

# What may follow a relation in FROM (and its alias): the clauses, the extension's first.
AFTER_RELATION = (
    "WATERMARK",
    "WINDOW",
    "WHERE",
    "DEDUPLICATE ON",
    "GROUP BY",
    "HAVING",
    "EMIT",
    "ORDER BY",
    "LIMIT",
    "JOIN",
    "LEFT JOIN",
    "INNER JOIN",
    "CROSS JOIN",
    "AS",
)

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
            return connector_options(context[: options.start()], options.group(1))
        relation = re.search(r"\bFROM\s+(\w+)(?:\s+(?:AS\s+)?(\w+))?\s+$", context, re.I)
        if relation and word_begun and self._is_relation(*relation.groups()):
            return [(k, KEYWORD) for k in AFTER_RELATION]
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

    def _is_relation(self, name: str, alias: str | None) -> bool:
        """`name` is a source or table, and `alias` (if any) no keyword: a clause comes next."""
        known = name.lower() in self.engine.sources or name.lower() in map(str.lower, self.tables)
        return known and (alias is None or alias.upper() not in self.keywords)

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


def connector_options(statement: str, written: str) -> list[Candidate]:
    """What may come next inside `WITH (written`: at a key, the keys the statement's kind of
    connector reads (only the chosen connector's once `connector = '...'` is written, and not
    those written already); after `connector =`, the connector names."""
    create = re.findall(r"\bCREATE\s+(?:OR\s+REPLACE\s+)?(SOURCE|SINK)\b", statement, re.I)
    kinds = [create[-1].lower()] if create else list(CONNECTORS)
    key, equals, value = written.rsplit(",", 1)[-1].partition("=")
    if equals:
        if key.strip().lower() != "connector" or value.strip() not in ("", "'"):
            return []
        quote = "" if value.strip() else "'"
        return [
            (f"{quote}{name}{quote}", f"{kind} connector")
            for kind in kinds
            for name in CONNECTORS[kind]
        ]
    named = re.search(r"\bconnector\s*=\s*'(\w+)'", written, re.I)
    chosen = named.group(1).lower() if named else None
    if not any(chosen in CONNECTORS[kind] for kind in kinds):
        chosen = None  # not (yet) a connector's name: every connector's keys
    given = {k.lower() for k in re.findall(r"(\w+)\s*=", written)}
    readers: dict[str, list[str]] = {}
    for kind in kinds:
        for name, connector in CONNECTORS[kind].items():
            if chosen in (None, name):
                for option in connector.OPTIONS:
                    readers.setdefault(option, []).append(f"{name} {kind}")
    return [(option, ", ".join(by)) for option, by in readers.items() if option not in given]
