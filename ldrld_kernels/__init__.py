"""Fused kernels for the LDRLD knowledge-distillation loss."""

from ldrld_kernels.adw import adw_weights
from ldrld_kernels.api import LDRLDLoss, LDRLDOutput, ldrld_loss
from ldrld_kernels.fused_linear import LDRLDFusedLinearLoss, ldrld_fused_linear_loss

__version__ = "0.1.0"

__all__ = ["LDRLDFusedLinearLoss", "LDRLDLoss", "LDRLDOutput", "__version__", "adw_weights",
           "ldrld_fused_linear_loss", "ldrld_loss"]
