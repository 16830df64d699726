"""The Triton kernels: the only part of the library that imports ``triton``.

- ``common``: device functions (base-2 math, the local term of a row's top-k).
- ``ldrld``: the LDRLD kernels and their jit helpers (selection, statistics, gradients).
- ``launcher``: their launcher (buffers, alignment, arguments, launches); ``sharded``: the
  launcher of a rank's slice of the classes (vocabulary parallel).
- ``scale``: the backward kernel (gradients times the upstream gradient, in place).
- ``policy``: which kernel serves which call and how it is launched; ``hardware``: what a
  launch knows of the GPU. Neither imports ``triton``.
- ``ops``: the custom ops that ``torch.compile`` sees.
- ``trips``: how often the kernels' loops run, for ``ldrld profile`` (no ``triton``).
"""


def import_triton() -> None:
    """Import ``triton`` (``ImportError`` when it is not installed): the backends' check that
    the Triton backend can run, here so that no module outside this package imports it."""
    import triton  # noqa: F401
