"""`kafka.*` connector options, passed through to kafka-python (security, SASL, SSL, tuning)."""

from __future__ import annotations

import re
from typing import Any

from streamsql.errors import ProgrammingError
from streamsql.options import shown

PREFIX = "kafka."
TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")  # the names Kafka accepts
INTEGER_OR_UNSET = ("receive_buffer_bytes", "send_buffer_bytes")  # default None, else int
OBJECTS = ("ssl_context", "sasl_oauth_token_provider")  # their default is None


def client_settings(
    owner: str, options: dict[str, str], defaults: dict[str, Any], owned: dict[str, str]
) -> dict[str, Any]:
    """The `kafka.` options as kafka-python settings (`kafka.security_protocol` or
    `kafka.security.protocol`), typed as each setting's default: a password stays text.
    `owned` names the settings the connector sets itself, and why."""
    settings: dict[str, Any] = {}
    for option, text in options.items():
        if not option.startswith(PREFIX):
            continue
        setting = option.removeprefix(PREFIX).replace(".", "_")  # Java's names work too
        if setting not in defaults:
            raise ProgrammingError(f"{owner}: {option} is not a setting of kafka-python")
        if setting in owned:
            raise ProgrammingError(f"{owner}: {option} cannot be set: {owned[setting]}")
        kind = _kind(setting, defaults[setting])
        if kind is None:
            raise ProgrammingError(
                f"{owner}: {option} takes a Python object, which an option cannot give"
            )
        try:
            settings[setting] = _typed(text, kind)
        except ValueError:
            raise ProgrammingError(
                f"{owner}: {option} = {shown(option, text)} is not {kind}"
            ) from None
    return settings


def _kind(setting: str, default: Any) -> str | None:
    """What a KafkaProducer setting takes, judged by its default; None: a Python object."""
    if setting in OBJECTS:
        return None
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int) or setting in INTEGER_OR_UNSET:
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if setting == "api_version":
        return "a version"
    if default is None or isinstance(default, str):
        return "text"
    return None


def _typed(text: str, kind: str) -> Any:
    if kind == "true or false":
        if text.lower() not in ("true", "false"):
            raise ValueError(text)
        return text.lower() == "true"
    if kind == "an integer":
        return int(text)
    if kind == "a number":
        number = float(text)
        return int(number) if number.is_integer() else number
    if kind == "a version":  # '2.8' -> (2, 8)
        return tuple(int(part) for part in text.split("."))
    return text


def topic_names(owner: str, text: str) -> list[str]:
    """The topics of a comma-separated `topic` option, each a name Kafka accepts."""
    topics = [topic.strip() for topic in text.split(",") if topic.strip()]
    if not topics or not all(TOPIC.fullmatch(topic) for topic in topics):
        raise ProgrammingError(
            f"{owner}: topic = {text!r} is not a list of Kafka topic names (letters, digits, "
            "'.', '_' and '-')"
        )
    return topics
