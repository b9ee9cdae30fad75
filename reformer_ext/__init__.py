"""reformer_ext: the Reformer's LSH attention, reversible layers and chunked feed-forward as
PyTorch operators (torch.ops.reformer.*) with C++ and CUDA kernels."""

__version__ = "0.1.0"

from . import _library  # noqa: E402

_library.load()

from ._library import default_device, has_cuda_kernels, require_device  # noqa: E402

from . import ops  # noqa: E402  (registers every operator family)
from .ops.lsh_attention import lsh_attention, lsh_buckets, random_rotations  # noqa: E402
from .ops.chunked_ffn import chunked_feed_forward  # noqa: E402
from .ops.local_attention import local_attention  # noqa: E402
from . import nn  # noqa: E402

__all__ = ["chunked_feed_forward", "default_device", "has_cuda_kernels", "local_attention",
           "lsh_attention", "lsh_buckets", "nn", "ops", "random_rotations", "require_device"]
