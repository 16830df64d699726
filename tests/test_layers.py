"""The layering at run time and in the import graph (`lint-imports` checks the contracts in
pyproject.toml): importing the library, or the command line, imports no triton, so that
``ldrld`` can set ``TRITON_INTERPRET`` before any kernel module is imported; and no import
cycle runs through the package's modules, functions' imports included."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# the modules whose import must not import triton: the library, the command line (its
# commands import the kernels when they run), the reference, and what the profiler imports
# before any kernel module (policy and trips, which import hardware)
TRITON_FREE = ["ldrld_kernels", "ldrld_kernels.tools.cli", "ldrld_kernels.reference",
               "ldrld_kernels.kernels.policy", "ldrld_kernels.kernels.trips"]


@pytest.mark.parametrize("module", TRITON_FREE)
def test_import_does_not_import_triton(module):
    code = (f"import sys, {module}\n"
            "kernels = sorted(name for name in sys.modules if name == 'triton'\n"
            "                 or name.startswith(('triton.', 'ldrld_kernels.kernels.')))\n"
            "print(' '.join(kernels))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    imported = set(result.stdout.split())
    assert "triton" not in imported, f"import {module} imports triton"
    # the kernel modules that import triton, whatever imports them
    triton_modules = {f"ldrld_kernels.kernels.{name}"
                      for name in ("common", "ldrld", "launcher", "sharded", "scale", "ops")}
    assert not imported & triton_modules, f"import {module} imports {imported & triton_modules}"


def _cycle(imported_by, modules):
    """One import cycle among ``modules`` (a list of names, closed), or None;
    ``imported_by(module)`` is the set of modules that ``module`` imports."""
    state = {}  # module -> 1 while on the path, 2 when done
    path = []

    def visit(module):
        state[module] = 1
        path.append(module)
        for imported in sorted(imported_by(module) & modules):
            if state.get(imported) == 1:
                return [*path[path.index(imported):], imported]
            if imported not in state and (found := visit(imported)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(modules):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_import_cycle_between_modules(monkeypatch):
    """Module by module, package ``__init__`` modules included (the ``acyclic_siblings``
    contract compares siblings, so it cannot see a cycle through a package's own
    ``__init__``)."""
    grimp = pytest.importorskip("grimp")
    monkeypatch.syspath_prepend(str(ROOT))  # reference/ as a root package, as lint-imports
    graph = grimp.build_graph("ldrld_kernels", "reference", cache_dir=None)
    modules = set(graph.modules)
    assert {"ldrld_kernels.kernels.ops", "ldrld_kernels.tools.cli", "reference"} <= modules
    cycle = _cycle(graph.find_modules_directly_imported_by, modules)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    imports = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert _cycle(imports.__getitem__, set(imports)) == ["a", "b", "c", "a"]
    imports["c"] = {"d"}
    assert _cycle(imports.__getitem__, set(imports)) is None
