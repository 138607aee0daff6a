"""Secret option values (passwords, tokens, keys): recognised by the option's name, and
hidden wherever a value would be shown (messages, SHOW SOURCES / SHOW SINKS)."""

from __future__ import annotations

import re

# An option is secret when its name says so: it contains password, passwd, secret, token,
# credential or jaas, or it ends in `_key`/`.key` (ssl_key, account_key, ssl.key.pem). The
# Kafka sink's `key`, an expression, is not secret.
SECRET_NAME = re.compile(r"password|passwd|secret|token|credential|jaas|[._]key(?:[._]pem)?$", re.I)
HIDDEN = "'***'"

# `name = value` (or `name 'value'`, as in DuckDB's CREATE SECRET) in SQL text or a message.
_ASSIGNMENT = re.compile(
    r"(?P<name>[A-Za-z_][\w.]*)(?P<sep>\s*=\s*|\s*:\s*|\s+(?=['\"]))"
    r"(?P<value>'(?:[^'\n]|'')*'?|\"(?:[^\"\n]|\"\")*\"?|[^\s,;)'\"]+)"
)
_SHORTEST_HIDDEN_BY_VALUE = 4  # shorter secrets are hidden where they are assigned only


def is_secret(name: str) -> bool:
    """Whether an option's value is hidden wherever it would be shown."""
    return SECRET_NAME.search(name) is not None


def shown(name: str, value: str | None) -> str:
    """An option's value as messages show it: quoted, or hidden when the option is secret."""
    if value is None:
        return "unset"
    return HIDDEN if is_secret(name) else repr(value)


def secrets_in(text: str) -> list[str]:
    """The values assigned to secret names in SQL text (`kafka.ssl_password = '...'`)."""
    values = []
    for match in _ASSIGNMENT.finditer(text):
        if is_secret(match["name"]):
            value = match["value"]
            if value[:1] in "'\"":
                value = value[1:-1] if len(value) > 1 and value[-1] == value[0] else value[1:]
            values.append(value.replace("''", "'").replace('""', '"'))
    return values


def redact(message: str, sql: str = "") -> str:
    """`message` with the values of secret options hidden: where they are assigned in the
    message, and wherever a secret assigned in `sql` (the statement the message is about)
    appears in it, quoted or not."""
    for value in sorted(set(secrets_in(sql) + secrets_in(message)), key=len, reverse=True):
        if len(value) >= _SHORTEST_HIDDEN_BY_VALUE:
            for form in (repr(value), f"'{value}'", f'"{value}"'):
                message = message.replace(form, HIDDEN)
            message = message.replace(value, HIDDEN.strip("'"))

    def hide(match: re.Match[str]) -> str:
        if not is_secret(match["name"]) or match["value"] == HIDDEN:
            return match[0]
        return f"{match['name']}{match['sep']}{HIDDEN}"

    return _ASSIGNMENT.sub(hide, message)
