"""Reading a spec file: YAML with two fixes over PyYAML's safe loader, then :func:`~.spec.parse_spec`.

* ``1e-3`` is read as a number (YAML 1.1, as PyYAML reads it, makes it a string);
* a key given twice in one mapping is an error (PyYAML silently keeps the last).

A missing or unreadable file and invalid YAML are :class:`~.spec.SpecError` lines like every bad field.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from .spec import SearchSpec, SpecError, parse_spec


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float and records keys given twice in one mapping."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                if key_node.value in seen:
                    mark = key_node.start_mark
                    self.duplicates.append(
                        f"spec: {key_node.value!r} — key given twice in one mapping (line {mark.line + 1}, "
                        f"column {mark.column + 1}); give each key once"
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


#: A spec is a few KB of YAML; the file never decides how much memory reading it takes.
MAX_SPEC_BYTES = 1 << 20
#: Values a spec may expand to through YAML aliases (a real spec has a few hundred; a "billion laughs"
#: document a few KB long has 10**9).
MAX_SPEC_VALUES = 100_000
#: C0 controls but tab, line feed and carriage return; DEL; C1 controls.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _expanded_size(node: yaml.Node, seen: dict[int, int]) -> int:
    """How many values ``node`` stands for once every alias is expanded: linear in the document's size (a
    node an alias refers to again is counted from ``seen``), however large the expansion."""
    key = id(node)
    if key not in seen:
        if isinstance(node, yaml.MappingNode):
            seen[key] = 1 + sum(_expanded_size(k, seen) + _expanded_size(v, seen) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            seen[key] = 1 + sum(_expanded_size(item, seen) for item in node.value)
        else:
            seen[key] = 1
    return seen[key]


def load_spec(path: str | os.PathLike) -> SearchSpec:
    """Read the YAML spec at ``path`` and validate it (see :func:`parse_spec`).

    Raises:
        SpecError: the file is missing or unreadable, is not valid YAML (the line names line and column),
            or holds an invalid spec (one line per bad field).
    """
    data, duplicates = read_spec_data(path)
    return parse_spec(data, source=os.fspath(path), early=duplicates)


def read_spec_data(path: str | os.PathLike) -> tuple[Any, list[str]]:
    """The YAML document at ``path``, not yet validated, and the error lines of its duplicate keys (which
    :func:`parse_spec` reports with the spec's own errors); the file checks of :func:`load_spec`."""
    source = os.fspath(path)
    shown = repr(source if len(source) <= 300 else f"{source[:140]}...{source[-140:]}")  # a name can be huge
    try:
        if not os.path.isfile(source):
            raise SpecError([f"spec: file {shown} does not exist"], source)
        if os.path.getsize(source) > MAX_SPEC_BYTES:
            raise SpecError(
                [
                    f"spec: file {shown} — {os.path.getsize(source):_} bytes; allowed: a spec of at most "
                    f"{MAX_SPEC_BYTES:_} bytes"
                ],
                source,
            )
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:  # a name too long, a NUL in it, not UTF-8, unreadable
        if isinstance(exc, SpecError):
            raise
        reason = " ".join(str(exc).split())[:200]
        raise SpecError([f"spec: file {shown} — cannot be read: {reason}"], source) from None
    bad = _CONTROL_RE.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        column = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        raise SpecError(
            [
                f"spec: file {shown} — control character U+{ord(bad.group()):04X} at line {line}, column "
                f"{column}; allowed: plain text (tabs and line breaks only)"
            ],
            source,
        )
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_SPEC_VALUES:
            raise SpecError(
                [
                    f"spec: file {shown} — its YAML aliases expand to more than {MAX_SPEC_VALUES:_} values; "
                    "allowed: a spec without such aliases"
                ],
                source,
            )
        data = loader.construct_document(node) if node is not None else None
    except RecursionError:
        raise SpecError(
            [f"spec: file {shown} — nested too deeply; allowed: a spec a few levels deep"], source
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(
            [f"spec: file {source!r} — invalid YAML{where}: {' '.join(problem.split())}"], source
        ) from None
    finally:
        loader.dispose()
    return data, list(loader.duplicates)
