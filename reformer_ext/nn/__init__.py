"""Modules (docs/semantics.md §4, ``reformer_ext.nn``): thin nn.Module shims over the reformer
operators."""

from .feed_forward import ChunkedFeedForward
from .attention import LSHSelfAttention
from .local_attention import LocalSelfAttention
from .position import AxialPositionEmbedding
from .reversible import ReversibleBlock, ReversibleSequence
from .reformer import Reformer, ReformerLM
from .drop_in import SequenceFirstLSHAttention, replace_attention
from .sharding import (load_sharded_checkpoint, save_sharded_checkpoint,
                       set_dropout_sample_offset, shard_reformer)

__all__ = ["AxialPositionEmbedding", "ChunkedFeedForward", "LSHSelfAttention",
           "LocalSelfAttention", "Reformer", "ReformerLM", "ReversibleBlock",
           "ReversibleSequence", "SequenceFirstLSHAttention", "load_sharded_checkpoint",
           "replace_attention", "save_sharded_checkpoint", "set_dropout_sample_offset",
           "shard_reformer"]
