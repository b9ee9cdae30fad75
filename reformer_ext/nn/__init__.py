"""Modules (SPEC §4, ``reformer_ext.nn``): thin nn.Module shims over the reformer operators."""

from .feed_forward import ChunkedFeedForward
from .attention import LSHSelfAttention
from .reversible import ReversibleBlock, ReversibleSequence
from .reformer import Reformer, ReformerLM

__all__ = ["ChunkedFeedForward", "LSHSelfAttention", "Reformer", "ReformerLM", "ReversibleBlock",
           "ReversibleSequence"]
