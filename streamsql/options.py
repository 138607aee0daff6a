"""Connector options (`WITH (...)`): read typed, checked when the statement runs, secrets hidden.

Every option a connector reads is checked when its CREATE statement runs, before anything
is stored; a value that is not what the option takes is an error naming the connector, the
option and the value (hidden when the option is secret: see streamsql.secrets).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from streamsql.errors import ProgrammingError
from streamsql.format import parse_bytes, parse_seconds
from streamsql.secrets import shown


class Configured:
    """Typed reads of a connector's options: a value the option cannot take is a
    ProgrammingError naming the connector (`owner`), the option and the value."""

    options: dict[str, str]

    @property
    def owner(self) -> str:
        raise NotImplementedError

    def _invalid(self, key: str, expected: str) -> ProgrammingError:
        return ProgrammingError(
            f"{self.owner}: {key} = {shown(key, self.options[key])} is not {expected}"
        )

    def _parsed(self, key: str, default: Any, parse: Callable[[str], Any], expected: str) -> Any:
        if key not in self.options:
            return default
        try:
            value = parse(self.options[key])
        except ValueError:
            value = None
        if value is None:
            raise self._invalid(key, expected)
        return value

    def option_bool(self, key: str, default: bool) -> bool:
        def boolean(text: str) -> bool | None:
            return {"true": True, "false": False}.get(text.strip().lower())

        return self._parsed(key, default, boolean, "true or false")

    def option_seconds(self, key: str, default: float, allow_zero: bool = False) -> float:
        """A duration ('10 seconds', '500 ms'), positive unless `allow_zero`."""

        def positive(text: str) -> float | None:
            seconds = parse_seconds(text)
            if seconds is None or seconds < 0 or (seconds == 0 and not allow_zero):
                return None
            return seconds

        return self._parsed(key, default, positive, "a duration like '10 seconds'")

    def option_int(self, key: str, default: int | None = None, minimum: int = 1) -> int | None:
        def at_least(text: str) -> int | None:
            number = int(text)
            return number if number >= minimum else None

        return self._parsed(key, default, at_least, f"an integer of at least {minimum}")

    def option_size(self, key: str, default: int) -> int:
        return self._parsed(key, default, parse_bytes, "a size like '128MB'")

    def option_choice(self, key: str, choices: Iterable[str], default: str) -> str:
        """One of a closed set of words, lower case (codecs, formats, modes)."""
        allowed = tuple(choices)

        def one_of(text: str) -> str | None:
            return text.lower() if text.lower() in allowed else None

        return self._parsed(key, default, one_of, f"one of {', '.join(allowed)}")

    def option_char(self, key: str, default: str) -> str:
        """A field delimiter: one character, not a quote or a line break."""

        def delimiter(text: str) -> str | None:
            return text if len(text) == 1 and text not in '"\r\n\0' else None

        return self._parsed(key, default, delimiter, "one character (not a quote or line break)")

    def option_text(self, key: str, default: str | None = None) -> str | None:
        """Free text, which reaches SQL only quoted: any value but an empty one or one
        with a NUL character, which neither DuckDB nor the file system take."""

        def text(value: str) -> str | None:
            return value if value and "\0" not in value else None

        return self._parsed(key, default, text, "a non-empty text without NUL characters")

    def option_required(self, key: str, what: str) -> str:
        """A text option the connector cannot do without."""
        value = self.option_text(key)
        if value is None:
            raise ProgrammingError(f"{self.owner}: the {what} connector needs {key}")
        return value
