"""The Python side of the ``torch.ops.reformer`` operators, one module per operator family:

- :mod:`.lsh_attention`: ``lsh_buckets``, ``lsh_attention`` (+ backward);
- :mod:`.local_attention`: ``local_attention`` (+ backward);
- :mod:`.chunked_ffn`: ``chunked_ffn`` (+ backward);
- :mod:`.reformer_stack`: ``reformer_stack`` (+ backward);
- :mod:`.gemm`: the private ``_gemm`` (tests and benchmarks).

Each family module holds the operators' fake kernels, autograd and autocast registrations and the
functional wrapper the package exports (``reformer_ext.lsh_attention``, ...). Shared by them and
by ``reformer_ext.nn``: :mod:`._checks` (argument checks) and :mod:`.seeded_random` (SplitMix64,
seeded dropout, seeded rotations). Importing this package registers every family; the schemas
name these modules (``set_python_module`` in csrc/registration.cpp), so torch imports the right
one when it meets an operator first.
"""

from . import (chunked_ffn, gemm, local_attention, lsh_attention, reformer_stack,  # noqa: F401
               seeded_random)

__all__ = ["chunked_ffn", "gemm", "local_attention", "lsh_attention", "reformer_stack",
           "seeded_random"]
