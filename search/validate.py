"""A small kit for validating a nested mapping (a YAML document) while collecting every problem.

Each check takes an :class:`Errors`, the dotted path of the value (``"train.epochs"``), the value and what
is allowed; it returns the checked value, or None after adding one line ``<path>: <value> — <allowed>``
to the errors. Nothing raises, so a caller reports every bad field at once. Used by
:mod:`mcel_search.search.spec`; knows nothing about searches.
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, fields
from typing import Any

_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")

#: Stands for a key that is absent (shown as ``missing`` in an error line).
ABSENT: Any = type("_Missing", (), {"__repr__": lambda self: "missing"})()


#: How much of a bad value an error line shows: a bounded repr, so a huge value (a YAML alias bomb, a list of
#: a million entries) costs no more to report than a small one.
_REPR = reprlib.Repr()  # Python 3.11's Repr takes no keyword arguments
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 3, 6, 6, 6, 6
_REPR.maxstring = _REPR.maxother = 72


def show_value(value: Any) -> str:
    """The bad value as it appears in an error line: a bounded repr, on one line, at most 80 characters."""
    text = "missing" if value is ABSENT else _REPR.repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= 80 else text[:77] + "..."


def join_path(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def did_you_mean(value: Any, options: Sequence[str]) -> str:
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class Errors:
    """Collects one line per problem: ``<path>: <value> — <what is allowed>``."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, path: str, value: Any, allowed: str) -> None:
        self.lines.append(f"{path or 'spec'}: {show_value(value)} — {allowed}")


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_num(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def check_int(errs: Errors, path: str, value: Any, *, ge: int, le: int, optional: bool = False) -> Any:
    """An integer in ``[ge, le]`` (bools are not integers). Every integer has an upper bound: a size
    without one (``epochs: 10**12``) would be accepted and then hang or exhaust the machine."""
    if optional and value is None:
        return None
    if is_int(value) and ge <= value <= le:
        return int(value)
    errs.add(path, value, f"an integer >= {ge} and <= {le:_}" + (" or null" if optional else ""))
    return None


def check_float(
    errs: Errors,
    path: str,
    value: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    optional: bool = False,
    what: str | None = None,
) -> Any:
    if optional and value is None:
        return None
    if is_num(value):
        v = float(value)
        if (gt is None or v > gt) and (ge is None or v >= ge) and (le is None or v <= le):
            return v
    if what is None:
        parts = [f"> {gt:g}" if gt is not None else "", f">= {ge:g}" if ge is not None else ""]
        parts.append(f"<= {le:g}" if le is not None else "")
        what = "a finite number " + " and ".join(p for p in parts if p)
    errs.add(path, value, what + (" or null" if optional else ""))
    return None


def check_str(errs: Errors, path: str, value: Any, *, optional: bool = False) -> Any:
    if optional and value is None:
        return None
    if isinstance(value, str) and value.strip():
        return value
    errs.add(path, value, "a non-empty string" + (" or null" if optional else ""))
    return None


def check_bool(errs: Errors, path: str, value: Any) -> Any:
    if isinstance(value, bool):
        return value
    errs.add(path, value, "true or false")
    return None


def check_choice(errs: Errors, path: str, value: Any, options: Sequence[str]) -> Any:
    if isinstance(value, str) and value in options:
        return value
    errs.add(path, value, f"one of {', '.join(options)}{did_you_mean(value, options)}")
    return None


def check_mapping(
    errs: Errors, path: str, value: Any, allowed: Sequence[str], required: Sequence[str] = ()
) -> dict:
    """The mapping at ``path`` with unknown keys reported (with a did-you-mean) and dropped; missing
    ``required`` keys reported. A non-mapping is reported and read as ``{}``."""
    if not isinstance(value, Mapping):
        errs.add(path, value, f"a mapping with keys {', '.join(allowed)}")
        return {}
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in allowed:
            out[key] = item
        else:
            hint = did_you_mean(key, allowed)
            errs.add(join_path(path, key), item, f"unknown key; allowed keys: {', '.join(allowed)}{hint}")
    for key in required:
        if key not in out:
            errs.add(join_path(path, key), ABSENT, "required")
    return out


def check_section(errs: Errors, path: str, value: Any, cls: type, required: Sequence[str] = ()) -> dict:
    """The keys of ``value`` (a mapping of ``cls`` fields, or absent) checked for unknown/missing keys, with
    every absent field that has a default given ``cls``'s default: the dataclass is the one place a
    default is written."""
    if value is ABSENT:
        value = {}
    out = check_mapping(errs, path, value, [f.name for f in fields(cls)], required)
    for f in fields(cls):
        if f.name in out or f.name in required:
            continue
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def check_list(errs: Errors, path: str, value: Any, what: str) -> list[tuple[str, Any]]:
    """``[(item path, item)]`` of a non-empty list without duplicates; problems reported."""
    if value is ABSENT:  # reported by the caller as a missing required key
        return []
    if not isinstance(value, list | tuple) or not value:
        errs.add(path, value, f"a non-empty list of {what}")
        return []
    seen: list[Any] = []
    items = []
    for i, item in enumerate(value):
        if item in seen:
            errs.add(f"{path}[{i}]", item, "a duplicate: each entry may appear once")
            continue
        seen.append(item)
        items.append((f"{path}[{i}]", item))
    return items


def split_uri(value: str) -> tuple[str | None, str]:
    """``(base scheme, rest after ':')``; base scheme lower-cased without a ``+driver`` suffix."""
    m = _SCHEME_RE.match(value)
    if not m or len(m.group(1)) == 1:  # no scheme, or a Windows drive letter
        return None, value
    return m.group(1).split("+")[0].lower(), value[m.end() :]


def uri_scheme(value: str) -> str | None:
    return split_uri(value)[0]


def check_uri(
    errs: Errors, path: str, value: Any, schemes: Sequence[str], what: str, *, bare_path: bool
) -> Any:
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        errs.add(path, value, what)
        return None
    scheme, rest = split_uri(value)
    if scheme is None:
        ok = bare_path
    elif scheme not in schemes:
        ok = False
    elif scheme == "file":
        ok = bool(rest.strip("/"))
    elif scheme == "sqlite":
        ok = rest.startswith("///") and len(rest) > 3
    else:
        ok = rest.startswith("//") and bool(rest[2:].split("/")[0])
    if ok:
        return value
    errs.add(path, value, what)
    return None
