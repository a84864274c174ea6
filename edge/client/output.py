"""Printing API answers: ``--format table|json|yaml|csv``.

* ``json``: the answer as the API gave it (lists unwrapped: ``[...]``, not ``{"proxies": [...]}``).
* ``yaml``: the same data in block style (:func:`to_yaml`, written here: no dependency).
* ``csv``: one row per record, every field a column; lists and objects as JSON text.
* ``table``: aligned columns chosen per command for lists, ``field  value`` lines for one
  record. ISO 8601 times show relative to now ("5m ago", "in 3d"). Status values are
  coloured only when stdout is a terminal and ``NO_COLOR`` is unset (and ``TERM`` is not
  ``dumb``); piped output is plain text.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from edge.client.errors import one_line
from edge.client.options import FORMATS

__all__ = [
    "FORMATS",
    "Column",
    "Printer",
    "parse_time",
    "relative_time",
    "to_csv",
    "to_yaml",
    "use_color",
]


_ISO_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?"
)
_GREEN, _RED, _YELLOW, _RESET = "\x1b[32m", "\x1b[31m", "\x1b[33m", "\x1b[0m"
_GOOD = frozenset({"active", "ok", "imported", "issued", "valid", "yes", "enabled", "accepted"})
_BAD = frozenset({"expired", "revoked", "error", "failed", "invalid", "no", "disabled"})
_WARN = frozenset({"pending", "invited", "expiring", "degraded", "draining"})


# ---------------------------------------------------------------------------- times


def parse_time(value: object) -> datetime | None:
    """``value`` as an aware datetime when it is an ISO 8601 date and time (else None)."""
    if not isinstance(value, str) or not _ISO_RE.fullmatch(value):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def relative_time(when: datetime, now: datetime) -> str:
    """``5m ago``, ``in 3d``, ``just now``: the largest whole unit, rounded down."""
    seconds = (now - when).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 1:
        return "just now"
    for size, unit in ((31_536_000, "y"), (86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")):
        if seconds >= size:
            text = f"{int(seconds // size)}{unit}"
            break
    return f"in {text}" if future else f"{text} ago"


# ---------------------------------------------------------------------------- colour


def use_color(stream: TextIO, env: Mapping[str, str]) -> bool:
    """Colour only on a terminal, unless ``NO_COLOR`` is set or ``TERM=dumb``."""
    if env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _status_color(text: str) -> str | None:
    word = text.strip().lower()
    if word in _GOOD:
        return _GREEN
    if word in _BAD:
        return _RED
    if word in _WARN:
        return _YELLOW
    return None


# ---------------------------------------------------------------------------- yaml

_PLAIN_RE = re.compile(r"[A-Za-z_/][A-Za-z0-9_./@+\-]*(?: [A-Za-z0-9_./@+\-]+)*")
_YAML_WORDS = frozenset(
    {"true", "false", "yes", "no", "on", "off", "y", "n", "null", "~", "nan", "inf"}
)
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}


def _yaml_string(text: str) -> str:
    if _PLAIN_RE.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    out = ['"']
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char.isprintable() or char == " ":
            out.append(char)
        elif ord(char) <= 0xFF:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    out.append('"')
    return "".join(out)


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    return _yaml_string(str(value))


def _yaml_lines(value: Any, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            name = _yaml_string(str(key))
            if isinstance(item, Mapping | list | tuple) and item:
                lines.append(f"{pad}{name}:")
                _yaml_lines(item, indent + 2, lines)
            else:
                lines.append(f"{pad}{name}: {_yaml_inline(item)}")
    elif isinstance(value, list | tuple) and value:
        for item in value:
            if isinstance(item, Mapping | list | tuple) and item:
                start = len(lines)
                _yaml_lines(item, indent + 2, lines)
                lines[start] = f"{pad}- {lines[start][indent + 2 :]}"
            else:
                lines.append(f"{pad}- {_yaml_inline(item)}")
    else:
        lines.append(pad + _yaml_inline(value))


def _yaml_inline(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, list | tuple):
        return "[]"
    return _yaml_scalar(value)


def to_yaml(value: Any) -> str:
    """``value`` (dicts, lists and JSON scalars) as a YAML block document."""
    lines: list[str] = []
    _yaml_lines(value, 0, lines)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- csv


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def to_csv(value: Any) -> str:
    """Records as CSV with a header row: every field seen is a column (first seen first)."""
    rows: list[Any] = list(value) if isinstance(value, list | tuple) else [value]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if all(isinstance(row, Mapping) for row in rows):
        columns: list[str] = []
        for row in rows:
            for key in row:
                if key not in columns:
                    columns.append(key)
        if not columns:
            return "" if not rows else "\n"
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_csv_cell(row.get(c)) for c in columns])
    else:
        writer.writerow(["value"])
        for row in rows:
            writer.writerow([_csv_cell(row)])
    return out.getvalue()


# ---------------------------------------------------------------------------- table


@dataclass(frozen=True, slots=True)
class Column:
    """One table column: its header and the record field (or a function of the record)."""

    header: str
    field: str | Callable[[Mapping[str, Any]], Any]
    status: bool = False  # colour the value
    relative: bool = True  # a date and time shown as "in 3d" (False: as it is)

    def value(self, record: Mapping[str, Any]) -> Any:
        return self.field(record) if callable(self.field) else record.get(self.field)


def _cell(value: Any, now: datetime, absolute: bool = False, relative: bool = True) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v, now, absolute) for v in value) or "-"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_cell(v, now, absolute)}" for k, v in value.items()) or "-"
    text = str(value)
    if not text:
        return '""'
    when = parse_time(text) if relative else None
    if when is not None:
        return f"{text} ({relative_time(when, now)})" if absolute else relative_time(when, now)
    return text if text.isprintable() else one_line(text)


class Printer:
    """Prints the results of one command in the chosen format."""

    def __init__(
        self,
        fmt: str = "table",
        *,
        stream: TextIO | None = None,
        color: bool | None = None,
        now: datetime | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.format = fmt
        self.stream = stream if stream is not None else sys.stdout
        env = os.environ if env is None else env
        self.color = use_color(self.stream, env) if color is None else color
        self.now = now

    @property
    def _now(self) -> datetime:
        return self.now or datetime.now(UTC)

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _paint(self, text: str, padded: str) -> str:
        color = _status_color(text) if self.color else None
        return f"{color}{padded}{_RESET}" if color else padded

    def _structured(self, data: Any) -> bool:
        if self.format == "json":
            self._write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        elif self.format == "yaml":
            self._write(to_yaml(data))
        elif self.format == "csv":
            self._write(to_csv(data))
        else:
            return False
        return True

    def records(self, items: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> None:
        """A list of records: a table of ``columns`` (or every field, in other formats)."""
        if self._structured(list(items)):
            return
        if not items:
            self._write("(none)\n")
            return
        now = self._now
        header = [c.header for c in columns]
        rows = [[_cell(c.value(item), now, relative=c.relative) for c in columns] for item in items]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(columns))]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
        for row in rows:
            cells = []
            for i, (text, column) in enumerate(zip(row, columns, strict=True)):
                padded = text if i == len(columns) - 1 else text.ljust(widths[i])
                cells.append(self._paint(text, padded) if column.status else padded)
            lines.append("  ".join(cells).rstrip())
        self._write("\n".join(lines) + "\n")

    def record(self, item: Mapping[str, Any], status_fields: Sequence[str] = ("status",)) -> None:
        """One record: ``field  value`` lines (every field, in the API's order)."""
        if self._structured(dict(item)):
            return
        if not item:
            self._write("(empty)\n")
            return
        now = self._now
        width = max(len(str(k)) for k in item)
        lines = []
        for key, value in item.items():
            if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
                lines.append(f"{key}:")
                for entry in value:
                    lines.append(
                        "  - " + ", ".join(f"{k}={_cell(v, now)}" for k, v in entry.items())
                    )
                continue
            text = _cell(value, now, absolute=True)
            if key in status_fields:
                text = self._paint(text, text)
            lines.append(f"{str(key).ljust(width)}  {text}")
        self._write("\n".join(lines) + "\n")

    def message(self, text: str) -> None:
        """A line about what was done: stdout for tables, stderr otherwise (stdout stays
        parseable in the structured formats)."""
        if self.format == "table":
            self._write(text + "\n")
        else:
            print(text, file=sys.stderr)
