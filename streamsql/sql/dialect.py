"""The streamsql dialect: DuckDB's SQL plus WATERMARK, WINDOW TUMBLING/HOPPING/SESSION,
DEDUPLICATE ON and EMIT.

Built the way sqlglot builds its dialects: class-level tables of keywords, statement
parsers and transforms, and a few small hooks where the DuckDB parser needs to learn
that a word is a clause here and not an alias.
"""

from __future__ import annotations

import typing as t

from sqlglot import exp
from sqlglot.dialects.duckdb import DuckDB
from sqlglot.generators.duckdb import DuckDBGenerator
from sqlglot.parsers.duckdb import DuckDBParser
from sqlglot.tokens import Token, TokenType
from sqlglot.trie import new_trie

from streamsql.sql import nodes

# Spark's output-mode names are accepted as synonyms, so a Spark user's words work too.
EMIT_MODES: dict[tuple[str, ...], str] = {
    ("CHANGES",): "CHANGES",
    ("UPDATE",): "CHANGES",
    ("FINAL",): "FINAL",
    ("ON", "WINDOW", "CLOSE"): "FINAL",
    ("APPEND",): "FINAL",
    ("SNAPSHOT",): "SNAPSHOT",
    ("COMPLETE",): "SNAPSHOT",
}

# Words that end a FROM item here instead of naming it.
CLAUSE_WORDS = {"WATERMARK", "EMIT", "DEDUPLICATE"}

# An edit of a statement's text that turns it into DuckDB's syntax, so DuckDB's parser can
# judge it: (start offset, end offset, replacement), offsets into the script.
Edit = tuple[int, int, str]


class StreamSQLParser(DuckDBParser):
    STREAM_WINDOW_PARSERS: t.ClassVar = {
        "TUMBLING": lambda self, this: nodes.TumblingWindow(
            this=this, size=self._parse_window_argument("size")
        ),
        "HOPPING": lambda self, this: nodes.HoppingWindow(
            this=this,
            size=self._parse_window_argument("size"),
            slide=self._parse_window_argument("slide"),
        ),
        "SESSION": lambda self, this: nodes.SessionWindow(
            this=this, gap=self._parse_window_argument("gap")
        ),
    }

    # Clauses of ours that follow a SELECT's own modifiers, in this order: (word, the
    # Select's arg, the method that parses what follows the word).
    TRAILING_CLAUSES: t.ClassVar = (
        ("DEDUPLICATE", "deduplicate", "_parse_deduplicate"),
        ("EMIT", "emit", "_parse_emit"),
    )

    QUERY_MODIFIER_PARSERS: t.ClassVar = {
        **DuckDBParser.QUERY_MODIFIER_PARSERS,
        TokenType.WINDOW: lambda self: self._parse_window_modifier(),
    }

    # `?` keeps its position, so a streaming query can number its parameters in text order.
    PLACEHOLDER_PARSERS: t.ClassVar = {
        **DuckDBParser.PLACEHOLDER_PARSERS,
        TokenType.PLACEHOLDER: lambda self: self.expression(exp.Placeholder(), self._prev),
    }

    STATEMENT_PARSERS: t.ClassVar = {
        **DuckDBParser.STATEMENT_PARSERS,
        TokenType.DESCRIBE: lambda self: (
            self._parse_describe_query()
            if self._curr and self._next and self._curr.text.upper() == "QUERY"
            else self._parse_describe()
        ),
    }

    # Statements that start with a word the tokenizer does not know as a keyword.
    WORD_STATEMENT_PARSERS: t.ClassVar = {
        "EXPLAIN": lambda self: self._parse_explain(),
        "STOP": lambda self: self._parse_stop_query(),
        "COMPACT": lambda self: self._parse_compact_sink(),
    }

    SHOW_PARSERS: t.ClassVar = {
        **DuckDBParser.SHOW_PARSERS,
        "SOURCES": lambda self: self.expression(nodes.ShowStreams(this=exp.var("SOURCES"))),
        "SINKS": lambda self: self.expression(nodes.ShowStreams(this=exp.var("SINKS"))),
        "QUERIES": lambda self: self.expression(nodes.ShowStreams(this=exp.var("QUERIES"))),
    }

    SHOW_TRIE = new_trie(key.split(" ") for key in SHOW_PARSERS)

    CONSTRAINT_PARSERS: t.ClassVar = {
        **DuckDBParser.CONSTRAINT_PARSERS,
        "WATERMARK": lambda self: self._parse_watermark_constraint(),
        "METADATA": lambda self: self._parse_metadata_constraint(),
    }

    SCHEMA_UNNAMED_CONSTRAINTS: t.ClassVar = {
        *DuckDBParser.SCHEMA_UNNAMED_CONSTRAINTS,
        "WATERMARK",
    }

    def reset(self) -> None:
        super().reset()
        self.duckdb_edits: list[Edit] = []

    def _remove_from(self, first: Token) -> None:
        """Record that the tokens from `first` to the last one parsed are ours, not DuckDB's."""
        self.duckdb_edits.append((first.start, self._prev.end + 1, ""))

    def _creating(self) -> str | None:
        """SOURCE or SINK when the statement is a CREATE of ours (or EXPLAINs one)."""
        skip = 1 if self._tokens and self._tokens[0].text.upper() == "EXPLAIN" else 0
        head = [token.token_type for token in self._tokens[skip : skip + 6]]
        if head[:1] != [TokenType.CREATE]:
            return None
        kind = next((k for k in head if k in (TokenType.SOURCE, TokenType.SINK)), None)
        return kind.name if kind else None

    def _parse_as_command(self, start: Token) -> exp.Command:
        """A CREATE SOURCE/SINK that does not parse is a syntax error where parsing stopped,
        not an opaque command that DuckDB would refuse at the word SOURCE or SINK."""
        if self._creating():
            token = self._curr or self._prev
            what = f"unexpected {token.text!r}" if self._curr else "unexpected end of statement"
            self.raise_error(what, token=token)
        return super()._parse_as_command(start)

    def _parse_ddl_select(self) -> exp.Expr | None:
        kind = self._creating()
        if kind and self._curr and self._prev.token_type != TokenType.ALIAS:
            if kind == "SINK":
                self.raise_error("Expected AS before the query of CREATE SINK")
            if start := self._query_start():
                self.raise_error(
                    "a ';' is probably missing after the CREATE SOURCE: a new statement starts "
                    "here",
                    token=start,
                )
            self.raise_error(f"unexpected {self._curr.text!r}")
        return super()._parse_ddl_select()

    def _query_start(self) -> Token | None:
        """Where a query starts here: SELECT, FROM or `WITH name AS` (whose WITH the options
        parser may have taken already), not a repeated WITH (...)."""
        if self._curr.token_type in (TokenType.SELECT, TokenType.FROM):
            return self._curr
        index = self._index - (self._prev.token_type == TokenType.WITH)
        kinds = [token.token_type for token in self._tokens[index : index + 3]]
        if kinds[:1] == [TokenType.WITH] and kinds[2:] == [TokenType.ALIAS]:
            return self._tokens[index]
        return None

    def _parse_column_def(self, this: exp.Expr | None, computed_column: bool = True) -> t.Any:
        """A computed column `name AS expr` is DuckDB's `name AS (expr)`."""
        start = self._index
        column = super()._parse_column_def(this, computed_column)
        tokens = self._tokens[start : self._index]
        if column and column.find(exp.ComputedColumnConstraint) and tokens:
            first = next(
                (i for i, tk in enumerate(tokens) if tk.token_type == TokenType.ALIAS), None
            )
            last = len(tokens) - 1
            while last > 0 and tokens[last].text.upper() in ("STORED", "VIRTUAL"):
                last -= 1
            if first is not None and first < last:
                self.duckdb_edits.append((tokens[first].end + 1, tokens[first].end + 1, " ("))
                self.duckdb_edits.append((tokens[last].end + 1, tokens[last].end + 1, ")"))
        return column

    def _parse_watermark_constraint(self) -> exp.WatermarkColumnConstraint:
        first = self._prev
        if not self._match(TokenType.FOR):
            self.raise_error("Expected FOR <column> after WATERMARK")
        column = self._parse_column()
        if not self._match(TokenType.ALIAS):
            self.raise_error(f"Expected AS {column.sql() if column else '<column>'} - INTERVAL ...")
        constraint = self.expression(
            exp.WatermarkColumnConstraint(this=column, expression=self._parse_disjunction())
        )
        # DuckDB sees the columns without it: its comma goes too, or the list has a hole.
        comma = self._curr if self._match(TokenType.COMMA, advance=False) else self._prev
        self.duckdb_edits.append((first.start, comma.end + 1, ""))
        return constraint

    def _parse_metadata_constraint(self) -> nodes.MetadataColumnConstraint:
        first = self._prev
        constraint = self.expression(
            nodes.MetadataColumnConstraint(
                this=self._match(TokenType.FROM) and self._parse_string(),
                virtual=self._match_text_seq("VIRTUAL"),
            )
        )
        self._remove_from(first)
        return constraint

    def _parse_property_assignment(self, exp_class: type[t.Any], **kwargs: t.Any) -> t.Any:
        """`key = value` in WITH (...): a key without its value is a syntax error here."""
        keyword = self._prev.text
        prop = super()._parse_property_assignment(exp_class, **kwargs)
        if prop.this is None:
            self.raise_error(f"Expected a value for option {keyword}")
        return prop

    def _parse_statement(self) -> exp.Expr | None:
        word = self._curr.text.upper() if self._curr else ""
        parser = self.WORD_STATEMENT_PARSERS.get(word)
        if parser and self._next:
            self._advance()
            return parser(self)
        return super()._parse_statement()

    def _parse_explain(self) -> nodes.Explain | exp.Command:
        if self._curr.text.upper() == "ANALYZE":
            return self._parse_as_command(self._prev)
        return self.expression(nodes.Explain(this=self._parse_statement()))

    def _parse_stop_query(self) -> nodes.StopQuery:
        if not self._match_text_seq("QUERY"):
            self.raise_error("Expected QUERY after STOP")
        return self.expression(nodes.StopQuery(this=self._parse_id_var()))

    def _parse_compact_sink(self) -> nodes.CompactSink:
        if not self._match(TokenType.SINK):
            self.raise_error("Expected SINK after COMPACT")
        return self.expression(nodes.CompactSink(this=self._parse_id_var()))

    def _parse_describe_query(self) -> nodes.DescribeQuery:
        self._match_text_seq("QUERY")
        return self.expression(nodes.DescribeQuery(this=self._parse_id_var()))

    def _parse_window_modifier(self) -> tuple[str, exp.Expr | list[exp.Expr] | None]:
        kind = self._next.text.upper() if self._next else ""
        after = self._tokens[self._index + 2] if self._index + 2 < len(self._tokens) else None
        if kind in self.STREAM_WINDOW_PARSERS and after and after.token_type == TokenType.L_PAREN:
            token = self._curr
            self._advance(2)
            window = self._parse_stream_window(kind, token)
            self._remove_from(token)
            return "stream_window", window
        return "windows", self._parse_window_clause()

    def _parse_stream_window(self, kind: str, token: Token) -> nodes.StreamWindow:
        self._match_l_paren()
        this = self._parse_disjunction()
        if this is None:
            self.raise_error(f"Expected the event-time column of WINDOW {kind}")
        window = self.STREAM_WINDOW_PARSERS[kind](self, this)
        self._match_r_paren()
        return self.expression(window, token)

    def _parse_window_argument(self, name: str) -> exp.Expr | None:
        if not self._match(TokenType.COMMA):
            self.raise_error(f"Expected ', <{name} interval>' in the WINDOW clause")
            return None
        argument = self._parse_disjunction()
        if argument is None:
            self.raise_error(f"Expected the {name} interval of the WINDOW clause")
        return argument

    def _parse_query_modifiers(self, this):  # type: ignore[no-untyped-def]
        this = super()._parse_query_modifiers(this)
        for word, arg, parse in self.TRAILING_CLAUSES:
            if isinstance(this, exp.Select) and self._match_text_seq(word):
                if this.args.get(arg):
                    self.raise_error(f"Found multiple '{word}' clauses", token=self._prev)
                first = self._prev
                this.set(arg, getattr(self, parse)())
                self._remove_from(first)
                this = super()._parse_query_modifiers(this)
        return this

    def _parse_deduplicate(self) -> nodes.Deduplicate:
        token = self._prev
        if not self._match(TokenType.ON) or not self._match(TokenType.L_PAREN, advance=False):
            self.raise_error("Expected ON (key, ...) after DEDUPLICATE")
        keys = self._parse_wrapped_csv(self._parse_disjunction)
        within = self._match_text_seq("WITHIN", "WATERMARK")
        return self.expression(
            nodes.Deduplicate(expressions=keys, within_watermark=within or None), token
        )

    def _parse_emit(self) -> nodes.Emit | None:
        token = self._prev
        for words, mode in EMIT_MODES.items():
            if self._match_text_seq(*words):
                return self.expression(nodes.Emit(this=exp.var(mode)), token)
        self.raise_error("Expected CHANGES, FINAL, ON WINDOW CLOSE or SNAPSHOT after EMIT")
        return None

    def _at_emit_clause(self) -> bool:
        return bool(
            self._curr
            and self._next
            and self._curr.text.upper() == "EMIT"
            and any(self._next.text.upper() == words[0] for words in EMIT_MODES)
        )

    def _parse_column(self) -> exp.Expr | None:
        # `GROUP BY ALL EMIT CHANGES`: EMIT starts a clause, it is not a grouping column.
        return None if self._at_emit_clause() else super()._parse_column()

    def _parse_table_alias(
        self, alias_tokens: t.Collection[TokenType] | None = None
    ) -> exp.TableAlias | None:
        if self._curr and self._curr.text.upper() in CLAUSE_WORDS:
            return None
        return super()._parse_table_alias(alias_tokens)

    def _parse_table(self, *args: t.Any, **kwargs: t.Any) -> exp.Expr | None:
        this = super()._parse_table(*args, **kwargs)
        if isinstance(this, (exp.Table, exp.Subquery)) and self._match_text_seq("WATERMARK"):
            first = self._prev
            this.set("watermark", self._parse_watermark())
            self._remove_from(first)
            if not this.args.get("alias") and (alias := self._parse_table_alias()):
                this.set("alias", alias)
        return this

    def _parse_watermark(self) -> nodes.Watermark:
        this = self._parse_disjunction()
        if this is None:
            self.raise_error("Expected the event-time expression after WATERMARK")
        alias = self._parse_id_var() if self._match(TokenType.ALIAS) else None
        if not self._match_text_seq("DELAY", "OF"):
            self.raise_error("Expected DELAY OF <interval> in the WATERMARK clause")
        delay = self._parse_disjunction()
        if delay is None:
            self.raise_error("Expected the delay interval after DELAY OF")
        return self.expression(nodes.Watermark(this=this, alias=alias, delay=delay))


class StreamSQLGenerator(DuckDBGenerator):
    TRANSFORMS: t.ClassVar = {
        **DuckDBGenerator.TRANSFORMS,
        nodes.TumblingWindow: lambda self, e: (
            f"WINDOW TUMBLING ({self.sql(e, 'this')}, {self.sql(e, 'size')})"
        ),
        nodes.HoppingWindow: lambda self, e: (
            f"WINDOW HOPPING ({self.sql(e, 'this')}, {self.sql(e, 'size')}, {self.sql(e, 'slide')})"
        ),
        nodes.SessionWindow: lambda self, e: (
            f"WINDOW SESSION ({self.sql(e, 'this')}, {self.sql(e, 'gap')})"
        ),
        nodes.Watermark: lambda self, e: (
            f"WATERMARK {self.sql(e, 'this')}"
            + (f" AS {self.sql(e, 'alias')}" if e.args.get("alias") else "")
            + f" DELAY OF {self.sql(e, 'delay')}"
        ),
        nodes.Emit: lambda self, e: f"EMIT {e.mode}",
        nodes.Deduplicate: lambda self, e: (
            f"DEDUPLICATE ON ({self.expressions(e, flat=True)})"
            + (" WITHIN WATERMARK" if e.args.get("within_watermark") else "")
        ),
        nodes.Explain: lambda self, e: f"EXPLAIN {self.sql(e, 'this')}",
        nodes.ShowStreams: lambda self, e: f"SHOW {e.name}",
        nodes.DescribeQuery: lambda self, e: f"DESCRIBE QUERY {self.sql(e, 'this')}",
        nodes.StopQuery: lambda self, e: f"STOP QUERY {self.sql(e, 'this')}",
        nodes.CompactSink: lambda self, e: f"COMPACT SINK {self.sql(e, 'this')}",
        nodes.MetadataColumnConstraint: lambda self, e: (
            "METADATA"
            + (f" FROM {self.sql(e, 'this')}" if e.args.get("this") else "")
            + (" VIRTUAL" if e.args.get("virtual") else "")
        ),
        exp.WatermarkColumnConstraint: lambda self, e: (
            f"WATERMARK FOR {self.sql(e, 'this')} AS {self.sql(e, 'expression')}"
        ),
    }

    AFTER_HAVING_MODIFIER_TRANSFORMS: t.ClassVar = {
        **DuckDBGenerator.AFTER_HAVING_MODIFIER_TRANSFORMS,
        "deduplicate": lambda self, e: (
            self.seg(self.sql(e, "deduplicate")) if e.args.get("deduplicate") else ""
        ),
        "stream_window": lambda self, e: (
            self.seg(self.sql(e, "stream_window")) if e.args.get("stream_window") else ""
        ),
    }

    # Connector options: `WITH (key = value, ...)` right after the name, as in Flink and RisingWave.
    PROPERTIES_LOCATION: t.ClassVar = {
        **DuckDBGenerator.PROPERTIES_LOCATION,
        exp.Property: exp.Properties.Location.POST_WITH,
        exp.FileFormatProperty: exp.Properties.Location.POST_WITH,
    }

    def after_limit_modifiers(self, expression: exp.Expr) -> list[str]:
        emit = expression.args.get("emit")
        return [
            *super().after_limit_modifiers(expression),
            self.seg(self.sql(emit)) if emit else "",
        ]

    def table_sql(self, expression: exp.Table, sep: str = " AS ") -> str:
        watermark = expression.args.get("watermark")
        if not watermark:
            return super().table_sql(expression, sep)
        bare = expression.copy()
        bare.set("watermark", None)
        bare.set("alias", None)
        alias = self.sql(expression, "alias")
        return f"{super().table_sql(bare, sep)} {self.sql(watermark)}" + (
            f"{sep}{alias}" if alias else ""
        )


class StreamSQL(DuckDB):
    class Tokenizer(DuckDB.Tokenizer):
        KEYWORDS: t.ClassVar = {
            **DuckDB.Tokenizer.KEYWORDS,
            "SINK": TokenType.SINK,
            "SOURCE": TokenType.SOURCE,
        }
        # EXPLAIN is a statement of ours, not an opaque command.
        KEYWORDS.pop("EXPLAIN")

    Parser = StreamSQLParser
    Generator = StreamSQLGenerator
