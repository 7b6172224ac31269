"""Names from outside become one safe path component inside the target directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcel_search.core.paths import MAX_COMPONENT, child_path, path_component


@pytest.mark.parametrize(
    "name, expected",
    [
        ("small_cnn-4b", "small_cnn-4b"),
        ("../../x", "_.._x"),
        ("..", "_"),
        ("/etc/passwd", "_etc_passwd"),
        ("a\\b", "a_b"),
        ("a\x00b c", "a_b_c"),
        (".hidden", "hidden"),
        ("", "_"),
        (7, "7"),
    ],
)
def test_path_component_by_hand(name: object, expected: str) -> None:
    assert path_component(name) == expected


def test_child_path_stays_inside(tmp_path: Path) -> None:
    for name in ("../../x", "/abs", "..", "a/../../b", "x" * 1000):
        path = child_path(tmp_path, name)
        assert path.parent == tmp_path.resolve() and len(path.name) <= MAX_COMPONENT
