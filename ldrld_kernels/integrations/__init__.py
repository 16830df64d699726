"""Drop-ins for the codebases that train with LDRLD, one module per host codebase; each
imports without its host installed (the host is only touched where a function says so).

- ``repdistiller``: the authors' own codebase (RepDistiller, their ``distiller_zoo/LDRLD.py``):
  ``LDRLD(alpha, beta, k, temperature, ce_loss_weight)``, the released criterion's call.
- ``mdistiller``: an ``LDRLD`` distiller in mdistiller's shape and its ``CFG.LDRLD`` block.
- ``hf``: ``LDRLDDistillation.compute_loss`` for ``transformers.Trainer`` and TRL's trainers
  (causal language models, from hidden states, the output layer as each model runs it).
"""
