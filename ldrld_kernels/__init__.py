"""Fused kernels for the LDRLD knowledge-distillation loss: the whole public surface.

``ldrld_kernels.reference`` is the plain PyTorch oracle (the repository's ``reference/``,
installed inside the package); ``ldrld_kernels.tools`` holds the ``ldrld`` command.
"""

import importlib.abc
import importlib.util
import sys
from pathlib import Path

from ldrld_kernels.adw import adw_weights
from ldrld_kernels.api import LDRLDLoss, LDRLDOutput, ldrld_loss
from ldrld_kernels.fused_linear import LDRLDFusedLinearLoss, ldrld_fused_linear_loss
from ldrld_kernels.sparse import SparseTeacher

__version__ = "0.1.0"

__all__ = ["LDRLDFusedLinearLoss", "LDRLDLoss", "LDRLDOutput", "SparseTeacher", "__version__",
           "adw_weights", "ldrld_fused_linear_loss", "ldrld_loss"]


class _CheckoutReference(importlib.abc.MetaPathFinder):
    """``ldrld_kernels.reference`` from a source checkout that is not installed (the source
    tree on ``PYTHONPATH``, as ``benchmarks/gpu_check.sh`` runs it): the ``reference/`` beside
    the package. An install maps it into the package itself (pyproject's ``package-dir``)."""

    def __init__(self, init: Path):
        self.init = init

    def find_spec(self, fullname, path=None, target=None):
        if fullname != f"{__name__}.reference":
            return None
        return importlib.util.spec_from_file_location(
            fullname, self.init, submodule_search_locations=[str(self.init.parent)])


_REFERENCE = Path(__file__).resolve().parent.parent / "reference" / "__init__.py"
if importlib.util.find_spec(f"{__name__}.reference") is None and _REFERENCE.is_file():
    sys.meta_path.append(_CheckoutReference(_REFERENCE))
