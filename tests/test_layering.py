"""The layering of DESIGN.md, enforced on every module: ``core`` imports neither the search stack (ray,
optuna, mlflow, pandas) nor the layers above it, ``analysis`` never imports ``search`` (nor ray/optuna),
and nothing imports the repository folders as bare top-level ``core`` / ``search`` / ``analysis``.

Imports are read with :mod:`ast` (every import statement, also those inside functions, and
``importlib.import_module("...")`` / ``__import__("...")`` with a literal name), relative imports resolved
to absolute module names. One more check imports ``mcel_search.core`` and all its submodules in a fresh
interpreter and looks at ``sys.modules``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mcel_search"
#: repository folder -> the subpackage it installs as (pyproject.toml, [tool.setuptools.package-dir])
LAYERS = {"core": f"{PACKAGE}.core", "analysis": f"{PACKAGE}.analysis", "search": f"{PACKAGE}.search"}
STACK = ("ray", "optuna", "mlflow", "pandas")
#: subpackage -> module prefixes it must not import
FORBIDDEN = {
    f"{PACKAGE}.core": (*STACK, f"{PACKAGE}.search", f"{PACKAGE}.analysis"),
    f"{PACKAGE}.analysis": ("ray", "optuna", f"{PACKAGE}.search"),
}
BARE = ("core", "search", "analysis")
SCANNED_FOR_BARE = ("core", "search", "analysis", "mcel_search", "tests", "benchmarks")


@dataclass(frozen=True)
class Import:
    """One imported module name (absolute), where it was written and whether it was written absolute."""

    module: str
    line: int
    absolute: bool

    def __str__(self) -> str:
        return f"line {self.line}: {self.module}"


def module_name(path: Path) -> tuple[str, bool]:
    """``(module name, is a package)`` of a file under a layer folder: ``core/models/vgg.py`` ->
    ``("mcel_search.core.models.vgg", False)``, ``core/models/__init__.py`` -> ``(".core.models", True)``."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    parts[0] = LAYERS[parts[0]]
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def resolve(module: str | None, level: int, current: str, is_package: bool) -> str:
    """The absolute module of ``from <level dots><module> import ...`` written in module ``current``."""
    if level == 0:
        assert module is not None
        return module
    package = current if is_package else current.rpartition(".")[0]
    parts = package.split(".")
    if level - 1 >= len(parts):
        raise ValueError(f"relative import beyond the top-level package in {current}")
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{module}" if module else base


def imports_of(source: str, current: str = "", is_package: bool = False) -> list[Import]:
    """Every module ``source`` imports, at any depth (functions, classes, try/except, if TYPE_CHECKING).

    ``from X import a`` yields ``X`` and ``X.a`` (``a`` may be a submodule: ``from .. import search``).
    Literal ``importlib.import_module("m")`` and ``__import__("m")`` calls count too."""
    out: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [Import(alias.name, node.lineno, True) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            absolute = node.level == 0
            if not absolute and not current:  # no module to resolve against (the bare-import scan)
                continue
            base = resolve(node.module, node.level, current, is_package)
            out.append(Import(base, node.lineno, absolute))
            out += [Import(f"{base}.{a.name}", node.lineno, absolute) for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            arg = node.args[0]
            if (
                name in ("import_module", "__import__")
                and isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
                and not arg.value.startswith(".")  # relative import_module(".x", package): rare, skipped
            ):
                out.append(Import(arg.value, node.lineno, True))
    return out


def matches(module: str, prefixes: tuple[str, ...]) -> str | None:
    """The prefix of ``prefixes`` that ``module`` is or lies under, else None."""
    for prefix in prefixes:
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return None


def violations(source: str, current: str, is_package: bool = False) -> list[str]:
    """The imports of ``source`` (module ``current``) that its layer forbids, one line each."""
    layer = ".".join(current.split(".")[:2])
    forbidden = FORBIDDEN.get(layer, ())
    bad = []
    for imp in imports_of(source, current, is_package):
        hit = matches(imp.module, forbidden)
        if hit is not None:
            bad.append(f"{imp} (a {layer} module must not import {hit})")
    return sorted(set(bad))


def bare_imports(source: str) -> list[str]:
    """Absolute imports of a bare top-level ``core``, ``search`` or ``analysis`` package."""
    return sorted({str(i) for i in imports_of(source) if i.absolute and i.module.split(".")[0] in BARE})


def layer_files() -> list[Path]:
    return sorted(p for folder in LAYERS for p in (ROOT / folder).rglob("*.py"))


def all_files() -> list[Path]:
    return sorted(p for folder in SCANNED_FOR_BARE for p in (ROOT / folder).rglob("*.py"))


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_scan_covers_the_package() -> None:
    names = {module_name(p)[0] for p in layer_files()}
    assert {
        "mcel_search.core",
        "mcel_search.core.losses",
        "mcel_search.core.models.vgg",
        "mcel_search.core.data",
        "mcel_search.analysis.pareto",
        "mcel_search.search.trainable",
    } <= names
    assert len(names) == len(layer_files()) >= 30
    scanned = {p.relative_to(ROOT).parts[0] for p in all_files()}
    assert scanned == set(SCANNED_FOR_BARE)
    assert ROOT / "tests" / "test_layering.py" in all_files()


@pytest.mark.parametrize("path", layer_files(), ids=_id)
def test_layer_imports_point_downward(path: Path) -> None:
    current, is_package = module_name(path)
    bad = violations(path.read_text(encoding="utf-8"), current, is_package)
    assert not bad, f"{_id(path)} ({current}) breaks the layering:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("path", all_files(), ids=_id)
def test_no_bare_top_level_package_imports(path: Path) -> None:
    bad = bare_imports(path.read_text(encoding="utf-8"))
    assert not bad, (
        f"{_id(path)} imports a repository folder by its bare name (use mcel_search.<layer>):\n  "
        + "\n  ".join(bad)
    )


def test_resolver_on_synthetic_sources() -> None:
    # relative imports resolve against the module's package; __init__ files are their own package
    assert resolve("layers", 2, "mcel_search.core.models.vgg", False) == "mcel_search.core.layers"
    assert resolve(None, 1, "mcel_search.core.models.vgg", False) == "mcel_search.core.models"
    assert resolve("registry", 1, "mcel_search.core.models", True) == "mcel_search.core.models.registry"
    assert resolve("core.losses", 2, "mcel_search.search.spec", False) == "mcel_search.core.losses"
    with pytest.raises(ValueError):
        resolve("x", 4, "mcel_search.core.losses", False)

    # `import ray` hidden inside a function of core/losses.py is caught, with its line
    hidden = textwrap.dedent(
        """
        import torch

        def f():
            if True:
                import ray.tune as tune
            return tune
        """
    )
    assert violations(hidden, "mcel_search.core.losses") == [
        "line 6: ray.tune (a mcel_search.core module must not import ray)"
    ]
    assert violations("def g():\n    from pandas import DataFrame\n", "mcel_search.core.losses")
    assert violations("import importlib\nimportlib.import_module('mlflow')\n", "mcel_search.core.data")
    # relative imports up into another layer
    assert violations("from ..search.spec import parse_spec\n", "mcel_search.core.losses")
    assert violations("from ... import analysis\n", "mcel_search.core.models", is_package=True)
    assert not violations("from .. import layers\n", "mcel_search.core.models", is_package=True)
    assert violations("from ...search import runner\n", "mcel_search.core.models.vgg")
    assert violations("from ..search import runner\n", "mcel_search.analysis.report")
    assert violations("class A:\n    def m(self):\n        import optuna\n", "mcel_search.analysis.x")
    # allowed: core within core, analysis on core and pandas/mlflow, search on anything
    assert not violations(
        "from ..layers import QuantLinear\nfrom . import base\n", "mcel_search.core.models.vgg"
    )
    assert not violations(
        "from ..core.losses import x\nimport pandas\nimport mlflow\n", "mcel_search.analysis.x"
    )
    assert not violations("import ray\nfrom ..analysis import pareto\n", "mcel_search.search.runner")
    # a module whose name merely starts like a forbidden one is not it
    assert not violations("import rayon\nimport pandas_stub\n", "mcel_search.core.losses")

    assert bare_imports("def f():\n    from core.losses import x\n") == [
        "line 2: core.losses",
        "line 2: core.losses.x",
    ]
    assert bare_imports("import search.spec as s\nimport analysis\n") == [
        "line 1: search.spec",
        "line 2: analysis",
    ]
    assert not bare_imports("from mcel_search.core import losses\nfrom .core import x\nimport coreutils\n")


#: Run in a fresh interpreter: import mcel_search.core and every submodule; print which of the search stack's
#: packages ended up in sys.modules and, for each, the chain of modules whose import first pulled it in.
RUNTIME_PROBE = """
import json, pkgutil, sys

STACK = set(sys.argv[1].split(","))
chains = {}


class Recorder:
    # sees every import first and finds nothing: records who asked for a stack package, then steps aside
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in STACK and top not in chains:
            chain, frame = [], sys._getframe(1)
            while frame is not None:
                mod = frame.f_globals.get("__name__", "")
                if not mod.startswith(("importlib", "_frozen_importlib")) and (not chain or chain[-1] != mod):
                    chain.append(mod)
                frame = frame.f_back
            chains[top] = [m for m in reversed(chain) if m != "__main__"] + [name]
        return None


sys.meta_path.insert(0, Recorder())
import mcel_search.core as core

names = [m.name for m in pkgutil.walk_packages(core.__path__, core.__name__ + ".")]
for name in names:
    __import__(name)
loaded = sorted({m.partition(".")[0] for m in sys.modules} & STACK)
print(json.dumps({"imported": names, "loaded": {top: chains.get(top, []) for top in loaded}}))
"""


def test_core_imports_no_search_stack_at_runtime() -> None:
    # cwd tests/: the repository root is not on sys.path (the installed package is what is imported)
    proc = subprocess.run(
        [sys.executable, "-c", RUNTIME_PROBE, ",".join(STACK)],
        cwd=ROOT / "tests",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"mcel_search.core.losses", "mcel_search.core.models.vgg", "mcel_search.core.data.digits"} <= set(
        report["imported"]
    )
    loaded = report["loaded"]
    assert not loaded, "importing mcel_search.core and its submodules loaded:\n  " + "\n  ".join(
        f"{top}, first via {' -> '.join(chain)}" for top, chain in loaded.items()
    )
