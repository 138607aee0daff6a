"""Highlighting: pygments' SQL lexer, taught the keywords of the streaming extension."""

from __future__ import annotations

from pygments.lexer import inherit, words
from pygments.lexers.sql import SqlLexer
from pygments.token import Keyword

from streamsql.shell.completion import EXTENSION_KEYWORDS


class StreamSQLLexer(SqlLexer):
    name = "StreamSQL"
    tokens = {"root": [(words(EXTENSION_KEYWORDS, suffix=r"\b"), Keyword), inherit]}
