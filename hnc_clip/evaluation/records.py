"""The records of an evaluation data file, read with every field's type checked and every error naming the file,
the record and the field.

- `read_json(path, expected)`: the file's JSON, or `DataFileError` saying what the file is instead: missing, empty
  (no bytes, or only white space), not JSON (line and column), an empty list or object (`[]`, `{}`: no records), or
  of another top-level type. A UTF-8 byte order mark is skipped: the file is valid JSON after it.
- `Record(path, where, value)`: one record's fields by type: `text`, `texts` (a list of strings; a string is refused,
  never read as its characters), `text_or_texts` (where a format documents both), `number`, `integer`. A record that
  lacks a field the format needs is the reader's to count (`has`); a field of the wrong type is an error, since it
  says the file is not the format the reader thinks.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

BOM = b"\xef\xbb\xbf"
JSON_TYPES = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}


class DataFileError(ValueError):
    """A data file is empty, not JSON, not the shape its reader needs, or has a field of the wrong type."""


def json_type(value) -> str:
    return "null" if value is None else JSON_TYPES.get(type(value), type(value).__name__)


def read_json(path: str, expected: type | tuple[type, ...] = (list, dict)):
    """The JSON in `path`, a value of `expected` type holding at least one record (see the module docstring)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    body = raw[len(BOM) :] if raw.startswith(BOM) else raw
    if not body.strip():
        raise DataFileError(f"{path}: empty file ({len(raw)} bytes{', a byte order mark' if body is not raw else ''})")
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataFileError(f"{path}: not UTF-8 at byte {err.start + len(raw) - len(body)}") from err
    except json.JSONDecodeError as err:
        raise DataFileError(f"{path}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from err
    except RecursionError as err:
        raise DataFileError(f"{path}: not valid JSON: nested too deeply") from err
    if isinstance(data, (list, dict)) and not data:
        raise DataFileError(f"{path}: an empty JSON {json_type(data)} ({json.dumps(data)}): no records")
    expected = expected if isinstance(expected, tuple) else (expected,)
    if not isinstance(data, expected):
        wanted = " or ".join(f"a JSON {json_type(t())}" for t in expected)
        raise DataFileError(f"{path}: a JSON {json_type(data)}, expected {wanted}")
    return data


def records(path: str, data) -> Iterator[Record]:
    """Each record of a JSON list (`record i`) or object (`record 'key'`) as a `Record`."""
    items = data.items() if isinstance(data, dict) else enumerate(data)
    for key, value in items:
        yield Record(path, f"record {key!r}" if isinstance(data, dict) else f"record {key}", value, str(key))


@dataclass
class Record:
    """One record of `path`, at `where` (its position, as errors name it), keyed `key` in item ids."""

    path: str
    where: str
    value: object
    key: str = ""

    def has(self, *names: str) -> bool:
        """Whether the record is an object holding every field of `names` (else the reader counts it)."""
        return isinstance(self.value, dict) and all(name in self.value for name in names)

    def error(self, name: str, why: str) -> DataFileError:
        return DataFileError(f"{self.path}: {self.where}: field {name!r} {why}")

    def _got(self, name: str, what: str) -> DataFileError:
        value = self.value[name]
        shown = json.dumps(value, default=str)
        return self.error(name, f"holds a {json_type(value)} ({shown[:60]}{'...' if len(shown) > 60 else ''}), "
                                f"expected {what}")  # fmt: skip

    def text(self, name: str) -> str:
        value = self.value[name]
        if not isinstance(value, str):
            raise self._got(name, "text")
        return value

    def texts(self, name: str) -> list[str]:
        value = self.value[name]
        if isinstance(value, str):
            raise self._got(name, "a list of strings (a string would be read as its characters)")
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._got(name, "a list of strings")
        return list(value)

    def text_or_texts(self, name: str) -> list[str]:
        value = self.value[name]
        return [self.text(name)] if isinstance(value, str) else self.texts(name)

    def number(self, name: str) -> float:
        value = self.value[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self._got(name, "a finite number")
        return float(value)

    def integer(self, name: str) -> int:
        value = self.value[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._got(name, "an integer")
        return value
