"""Plain PyTorch oracle of the LDRLD loss (see ``reference.ldrld``)."""

from reference.ldrld import ReferenceOutput, ldrld_loss

__all__ = ["ReferenceOutput", "ldrld_loss"]
