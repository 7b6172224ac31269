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


def load_spec(path: str | os.PathLike) -> SearchSpec:
    """Read the YAML spec at ``path`` and validate it (see :func:`parse_spec`).

    Raises:
        SpecError: the file is missing or unreadable, is not valid YAML (the line names line and column),
            or holds an invalid spec (one line per bad field).
    """
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise SpecError([f"spec: file {source!r} does not exist"], source)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([f"spec: file {source!r} — cannot be read: {exc}"], source) from None
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(
            [f"spec: file {source!r} — invalid YAML{where}: {' '.join(problem.split())}"], source
        ) from None
    finally:
        loader.dispose()
    return parse_spec(data, source=source, early=loader.duplicates)
