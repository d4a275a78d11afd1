"""The layers of the package, checked from the source: kernels import no dask, nothing imports upward."""

import ast

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "distkm"

#: What each subpackage may import from distkm (besides itself and distkm.config).
ALLOWED = {
    "kernels": set(),
    "io": set(),
    "cluster": set(),
    "engine": {"kernels"},
    "evaluation": {"kernels", "engine", "io"},
    "apps": {"kernels", "engine", "io", "evaluation", "estimator", "cluster"},
}


def imports(path):
    """Top-level module names imported by a file (every import, module level or in functions)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: relative import (use distkm.<subpackage>)")
            yield node.module
            if node.module == "distkm":  # from distkm import kernels
                yield from (f"distkm.{alias.name}" for alias in node.names)


@pytest.mark.parametrize("path", sorted((PACKAGE / "kernels").glob("*.py")), ids=lambda p: p.name)
def test_kernels_import_only_numpy_and_scipy(path):
    third_party = {name.split(".")[0] for name in imports(path)} - {"distkm", "__future__"}
    assert third_party <= {"numpy", "scipy", "typing", "dataclasses", "functools", "math"}, third_party


@pytest.mark.parametrize("subpackage", sorted(ALLOWED))
def test_nothing_imports_upward(subpackage):
    for path in (PACKAGE / subpackage).glob("*.py"):
        used = {name.split(".")[1] for name in imports(path) if name.startswith("distkm.")}
        upward = used - ALLOWED[subpackage] - {subpackage, "config"}
        assert not upward, f"{path.relative_to(PACKAGE.parent)} imports {sorted(upward)}"


#: Imports made inside functions on purpose, and why.
DEFERRED = {
    "distkm.evaluation.pictures": "matplotlib, imported only when a picture is drawn",
    "dask_jobqueue": "optional: SLURM clusters",
    "dask_kubernetes.operator": "optional: Kubernetes clusters",
    "distributed": "SSHCluster needs the optional asyncssh",
    "distkm.estimator": "distkm/__init__.py: workers never import scikit-learn (PEP 562)",
    "distkm.io.stores": "distkm/__init__.py: open_store on first use (PEP 562)",
    "distkm.cli.commands": "after parsing: --help, --version and usage errors answer at once",
}


def test_imports_are_at_the_top_of_modules_but_for_the_deferred_few():
    deferred = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                if isinstance(node, ast.ImportFrom):  # from M import N: M, or M.N when N is a module
                    names = [node.module if node.module in DEFERRED else f"{node.module}.{a.name}" for a in node.names]
                else:
                    names = [a.name for a in node.names]
                deferred += [f"{path.relative_to(PACKAGE.parent)}: {name}" for name in names if name not in DEFERRED]
    assert not deferred, deferred
