import os

import torch

# Kernel tests run compiled on a GPU, else under the Triton interpreter, which must be chosen
# before any kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
