"""The PyTorch path, and the math that crosses ranks: no Triton here.

- ``vectorized``: the loss and its gradients of whole rows (or of a rank's slice of the
  classes) in closed form, one batch of k x k pairs per call; runs on any device.
- ``selection``: each row's top-k in rank order, ties to the smaller class.
- ``parallel``: vocabulary parallel over ``torch.distributed`` (the ranks' agreement, the
  global top-k); the Triton path's sharded launcher (``kernels.sharded``) uses it too.
- ``dtensor``: DTensor logits placed ``Shard(-1)`` on a 1-D mesh (PyTorch's tensor
  parallelism) as ``parallel``'s call on their local slices, over the mesh's group.
"""
