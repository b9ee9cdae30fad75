"""reformer_ext: the Reformer's LSH attention, reversible layers and chunked feed-forward as
PyTorch operators (torch.ops.reformer.*) with C++ and CUDA kernels."""

from . import _library

_library.load()

from .ops import lsh_attention, lsh_buckets, random_rotations  # noqa: E402
from .feed_forward import chunked_feed_forward  # noqa: E402
from . import reformer_stack as _reformer_stack  # noqa: E402,F401  (registrations)
from . import nn  # noqa: E402

__all__ = ["chunked_feed_forward", "lsh_attention", "lsh_buckets", "nn", "random_rotations"]
__version__ = "0.1.0"
