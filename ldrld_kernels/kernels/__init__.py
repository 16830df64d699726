"""The Triton kernels: the only part of the library that imports ``triton``.

- ``common``: device functions (base-2 math, the local term of a row's top-k).
- ``ldrld``: the LDRLD kernels and their jit helpers (selection, statistics, gradients).
- ``launch``: their launcher (buffers, alignment, arguments, launches); ``sharded``: the
  launcher of a rank's slice of the classes (vocabulary parallel).
- ``scale``: the backward kernel (gradients times the upstream gradient, in place).
- ``policy``: which kernel serves which call and how it is launched; ``hardware``: what a
  launch knows of the GPU. Neither imports ``triton``.
- ``ops``: the custom ops that ``torch.compile`` sees.
- ``trips``: how often the kernels' loops run, for ``ldrld profile`` (no ``triton``).
"""
