"""Typed reading of untrusted JSON (engine manifests, spec files): every problem is one line naming the field.

    fields = Fields(data, "engine demo_int8", hint="rebuild the engine")
    batch = fields.integer("batch_size", 1, 256)
    spec = fields.object("spec")                    # a nested Fields, path "spec"
    spec.only({"name", "roi_size", ...})            # an unknown field is refused, not ignored

Nothing here trusts a value's type: ``"abc"`` where a number belongs, a list where an object belongs, NaN, a
bool where an int belongs all raise ``PTQError("<where>: field 'spec.roi_size' ...: <hint>")``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

from .errors import PTQError

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


class Fields:
    """A JSON object read field by field. ``path`` is the dotted position of this object in the document."""

    def __init__(self, data: Any, where: str, hint: str = "", path: str = ""):
        self.where, self.hint, self.path = where, hint, path
        if not isinstance(data, dict):
            self.fail(f"must be an object, not {_kind(data)}")
        self.data = data

    # ---------------------------------------------------------------------------------------------- errors
    def fail(self, problem: str, key: str | None = None):
        name = ".".join(p for p in (self.path, key) if p)
        subject = f"field '{name}' " if name else "the manifest "
        raise PTQError(f"{self.where}: {subject}{problem}" + (f": {self.hint}" if self.hint else ""))

    def only(self, known: Iterable[str]) -> None:
        """Refuse fields outside ``known`` (a tampered or foreign document, not one this version wrote)."""
        extra = sorted(set(self.data) - set(known))
        if extra:
            self.fail(f"has unknown field{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))}")

    def has(self, key: str) -> bool:
        return key in self.data

    def _value(self, key: str, required: bool):
        if key not in self.data:
            if required:
                self.fail("is missing", key)
            return None
        return self.data[key]

    # ----------------------------------------------------------------------------------------------- types
    def integer(self, key: str, lo: int | None = None, hi: int | None = None, required: bool = True, default=None):
        value = self._value(key, required)
        if value is None and not required:
            return default
        return self._check_integer(value, key, lo, hi)

    def number(self, key: str, lo: float | None = None, hi: float | None = None, required: bool = True, default=None,
               lo_open: bool = False):
        value = self._value(key, required)
        if value is None and not required:
            return default
        return self._check_number(value, key, lo, hi, lo_open)

    def string(self, key: str, choices: Iterable[str] | None = None, required: bool = True, default=None,
               plain_name: bool = False, max_length: int = 4096):
        value = self._value(key, required)
        if value is None and not required:
            return default
        if not isinstance(value, str):
            self.fail(f"must be a string, not {_kind(value)}", key)
        if len(value) > max_length:
            self.fail(f"is longer than {max_length} characters", key)
        if choices is not None and value not in choices:
            self.fail(f"is {value!r}, not one of {', '.join(sorted(choices))}", key)
        if plain_name and not _PLAIN_NAME.match(value):
            self.fail(f"is {value!r}, not a plain file or model name (letters, digits, '_', '-', '.')", key)
        return value

    def boolean(self, key: str, required: bool = True, default=None):
        value = self._value(key, required)
        if value is None and not required:
            return default
        if not isinstance(value, bool):
            self.fail(f"must be true or false, not {_kind(value)}", key)
        return value

    def object(self, key: str, required: bool = True) -> "Fields | None":
        value = self._value(key, required)
        if value is None and not required:
            return None
        if not isinstance(value, dict):
            self.fail(f"must be an object, not {_kind(value)}", key)
        return Fields(value, self.where, self.hint, ".".join(p for p in (self.path, key) if p))

    def objects(self, key: str, min_items: int = 0, max_items: int = 100_000) -> list["Fields"]:
        values = self.list(key, min_items, max_items)
        prefix = ".".join(p for p in (self.path, key) if p)
        return [Fields(v, self.where, self.hint, f"{prefix}[{i}]") for i, v in enumerate(values)]

    def list(self, key: str, min_items: int = 0, max_items: int = 100_000, required: bool = True):
        value = self._value(key, required)
        if value is None and not required:
            return None
        if not isinstance(value, list):
            self.fail(f"must be a list, not {_kind(value)}", key)
        if not min_items <= len(value) <= max_items:
            count = f"{min_items}" if min_items == max_items else f"{min_items} to {max_items}"
            self.fail(f"must have {count} items, not {len(value)}", key)
        return value

    def integers(self, key: str, count: int, lo: int | None = None, hi: int | None = None) -> tuple[int, ...]:
        return tuple(self._check_integer(v, f"{key}[{i}]", lo, hi) for i, v in enumerate(self.list(key, count, count)))

    def numbers(self, key: str, count: int, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False) -> tuple[float, ...]:
        return tuple(self._check_number(v, f"{key}[{i}]", lo, hi, lo_open) for i, v in enumerate(self.list(key, count, count)))

    def strings(self, key: str, required: bool = True, plain_names: bool = False) -> list[str] | None:
        values = self.list(key, required=required)
        if values is None:
            return None
        for i, value in enumerate(values):
            if not isinstance(value, str) or (plain_names and not _PLAIN_NAME.match(value)):
                self.fail(f"must hold {'plain file names' if plain_names else 'strings'}, not {value!r}", f"{key}[{i}]")
        return values

    # ---------------------------------------------------------------------------------------------- checks
    def _check_integer(self, value, key, lo, hi) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"must be an integer, not {_kind(value)}", key)
        self._check_range(value, key, lo, hi)
        return int(value)

    def _check_number(self, value, key, lo, hi, lo_open) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(f"must be a finite number, not {_kind(value)}", key)
        if lo_open and lo is not None and value <= lo:
            self.fail(f"is {value}, must be above {lo}", key)
        self._check_range(value, key, None if lo_open else lo, hi)
        return float(value)

    def _check_range(self, value, key, lo, hi) -> None:
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.fail(f"is {value}, must be between {lo} and {hi}", key)


def plain_json(value: Any, where: Fields, key: str, depth: int = 0) -> Any:
    """``value`` if it is made of JSON scalars, lists and string-keyed objects only (constructor arguments)."""
    if depth > 6:
        where.fail("is nested too deeply", key)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            where.fail("holds a non-finite number", key)
        return value
    if isinstance(value, list):
        return [plain_json(v, where, f"{key}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str) or not k.isidentifier():
                where.fail(f"has a key that is not an identifier: {k!r}", key)
        return {k: plain_json(v, where, f"{key}.{k}", depth + 1) for k, v in value.items()}
    where.fail(f"holds {_kind(value)}, not a JSON value", key)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else type(value).__name__
