"""Bad inputs of every reformer_ext.nn module: the constructor ("<Module>()") with each
argument bad in turn, and forward ("<Module>.forward") on a module built from valid arguments.

Each call must raise ValueError, TypeError or RuntimeError whose message names the argument. The
catalogue's machinery is in tests/_helpers.py; its completeness (every public module has
constructor and forward cases, every argument at least one) is checked in
tests/test_errors_catalogue.py.
"""

from dataclasses import dataclass
from typing import Callable

import torch

import reformer_ext.nn as rnn

from _helpers import MASK, ROT, C, Catalogue, to_meta

MB, ML, MD, VOCAB, MAX_LEN = 2, 10, 8, 11, 16


def _module_inputs():
    g = torch.Generator().manual_seed(2)
    mask = torch.zeros(MB, ML, dtype=torch.bool)
    mask[1, -3:] = True
    return dict(x=torch.randn(MB, ML, MD, generator=g), key_padding_mask=mask, rotations=None,
                dropout_seed=None, tokens=torch.randint(0, VOCAB, (MB, ML), generator=g),
                x1=torch.randn(MB, ML, MD, generator=g).requires_grad_(),
                x2=torch.randn(MB, ML, MD, generator=g).requires_grad_(),
                g_kwargs=None, f_kwargs={}, length=ML, batch_size=MB)


def _linear_pairs():
    return [(torch.nn.Linear(MD, MD), torch.nn.Linear(MD, MD)) for _ in range(2)]


@dataclass
class ModuleAPI:
    cls: type
    ctor: Callable[[], dict]  # valid constructor arguments (fresh objects on every call)
    positional: tuple  # the constructor arguments passed by position
    forward: Callable  # (module, merged inputs) -> result
    forward_args: tuple


MODULES = {
    "AxialPositionEmbedding": ModuleAPI(
        rnn.AxialPositionEmbedding,
        lambda: dict(axial_shape=(4, 4), axial_dims=(3, 5), dropout=0.1, init_std=1.0,
                     device=None, dtype=None),
        ("axial_shape", "axial_dims"),
        lambda m, a: m(a["length"], batch_size=a["batch_size"]),
        ("length", "batch_size")),
    "LSHSelfAttention": ModuleAPI(
        rnn.LSHSelfAttention,
        lambda: dict(d_model=MD, n_heads=2, d_head=None, bucket_size=4, n_hashes=2,
                     n_buckets=None, causal=False, n_chunks_before=1, n_chunks_after=0,
                     dropout=0.0, seed=0, fixed_rotations=None, out_bias=True,
                     hf_hash_seed=None, attention_dropout=0.0, device=None, dtype=None),
        ("d_model", "n_heads"),
        lambda m, a: m(a["x"], a["key_padding_mask"], rotations=a["rotations"]),
        ("x", "key_padding_mask", "rotations")),
    "ChunkedFeedForward": ModuleAPI(
        rnn.ChunkedFeedForward,
        lambda: dict(d_model=MD, d_ff=16, chunk_size=4, activation="gelu", dropout=0.1,
                     bias=True, device=None, dtype=None),
        ("d_model", "d_ff"),
        lambda m, a: m(a["x"], dropout_seed=a["dropout_seed"]),
        ("x", "dropout_seed")),
    "ReversibleSequence": ModuleAPI(
        rnn.ReversibleSequence,
        lambda: dict(blocks=_linear_pairs(), reversible=True, preserve_rng_state=True),
        ("blocks",),
        lambda m, a: m(a["x1"], a["x2"], g_kwargs=a["g_kwargs"], **a["f_kwargs"]),
        ("x1", "x2", "g_kwargs", "f_kwargs")),
    "Reformer": ModuleAPI(
        rnn.Reformer,
        lambda: dict(d_model=MD, depth=1, n_heads=2, d_ff=None, bucket_size=4, n_hashes=2,
                     causal=False, ff_chunk_size=4, dropout=0.0, reversible=True,
                     merge="concat", d_head=None, n_buckets=None, n_chunks_before=1,
                     n_chunks_after=0, activation="gelu", fixed_rotations=None,
                     attn_out_bias=True, hf_hash_seed=None, layer_norm_eps=1e-5,
                     attn_layers=None, local_chunk_length=4, local_chunks_before=1,
                     local_chunks_after=0, pad_to_multiple_of=None, lsh_attention_dropout=0.0,
                     local_attention_dropout=0.0, device=None, dtype=None),
        ("d_model", "depth", "n_heads"),
        lambda m, a: m(a["x"], a["key_padding_mask"]),
        ("x", "key_padding_mask")),
    "ReformerLM": ModuleAPI(
        rnn.ReformerLM,
        lambda: dict(num_tokens=VOCAB, d_model=MD, depth=1, n_heads=2, max_seq_len=MAX_LEN,
                     causal=True, init_std=0.02, axial_position_shape=None,
                     axial_position_dims=None, emb_dropout=0.0, device=None, dtype=None,
                     bucket_size=4, n_hashes=2),
        ("num_tokens", "d_model", "depth", "n_heads", "max_seq_len"),
        lambda m, a: m(a["tokens"], a["key_padding_mask"]),
        ("tokens", "key_padding_mask")),
}


def _build(api: ModuleAPI, over=None):
    kw = api.ctor()
    kw.update(over or {})
    args = [kw.pop(k) for k in api.positional]
    return api.cls(*args, **kw)


def _ctor_call(api):
    return lambda t, over: _build(api, over)


def _forward_call(api):
    def call(t, over):
        torch.manual_seed(0)
        a = dict(t)
        a.update(over)
        return api.forward(_build(api), a)
    return call


def add_modules(catalogue: Catalogue, modules, module_inputs) -> None:
    """Registers "<Module>()" (constructor) and "<Module>.forward" entries in ``catalogue`` for
    each ModuleAPI of ``modules``; ``module_inputs`` makes the forward's valid inputs."""
    for name, api in modules.items():
        catalogue.calls[f"{name}()"] = _ctor_call(api)
        catalogue.calls[f"{name}.forward"] = _forward_call(api)
        catalogue.base_of[f"{name}()"] = dict
        catalogue.base_of[f"{name}.forward"] = module_inputs
        catalogue.args[f"{name}()"] = set(api.ctor())
        catalogue.args[f"{name}.forward"] = set(api.forward_args)


CATALOGUE = Catalogue(calls={}, base_of={}, args={})
add_modules(CATALOGUE, MODULES, _module_inputs)

AX_M, AX_F = ("AxialPositionEmbedding()",), ("AxialPositionEmbedding.forward",)
ATTN_M, ATTN_F = ("LSHSelfAttention()",), ("LSHSelfAttention.forward",)
FF_M, FF_F = ("ChunkedFeedForward()",), ("ChunkedFeedForward.forward",)
RS_M, RS_F = ("ReversibleSequence()",), ("ReversibleSequence.forward",)
REF_M, REF_F = ("Reformer()",), ("Reformer.forward",)
LM_M, LM_F = ("ReformerLM()",), ("ReformerLM.forward",)
STACK_M = REF_M + LM_M  # constructor arguments the LM passes on to the Reformer

CATALOGUE.cases += [
    # ---- LSHSelfAttention constructor
    C("d_model=0", lambda t: dict(d_model=0), "d_model", ATTN_M + FF_M + STACK_M),
    C("d_model=-8", lambda t: dict(d_model=-8), "d_model", ATTN_M + FF_M + STACK_M),
    C("d_model=8.0", lambda t: dict(d_model=8.0), "d_model", ATTN_M + FF_M + STACK_M),
    C("d_model=None", lambda t: dict(d_model=None), "d_model", ATTN_M + REF_M),
    C("n_heads=0", lambda t: dict(n_heads=0), "n_heads", ATTN_M + STACK_M),
    C("n_heads=3 (d_model=8 not divisible)", lambda t: dict(n_heads=3), "n_heads|d_head",
      ATTN_M + STACK_M),
    C("n_heads='2'", lambda t: dict(n_heads="2"), "n_heads", ATTN_M + STACK_M),
    C("d_head=0", lambda t: dict(d_head=0), "d_head", ATTN_M + REF_M),
    C("d_head=4.0", lambda t: dict(d_head=4.0), "d_head", ATTN_M + REF_M),
    C("bucket_size=0 (module)", lambda t: dict(bucket_size=0), "bucket_size",
      ATTN_M + STACK_M),
    C("bucket_size=4.0 (module)", lambda t: dict(bucket_size=4.0), "bucket_size",
      ATTN_M + STACK_M),
    C("n_hashes=0 (module)", lambda t: dict(n_hashes=0), "n_hashes", ATTN_M + STACK_M),
    C("n_hashes=None (module)", lambda t: dict(n_hashes=None), "n_hashes", ATTN_M + STACK_M),
    C("n_buckets=3 (module)", lambda t: dict(n_buckets=3), "n_buckets", ATTN_M + STACK_M),
    C("n_buckets=0 (module)", lambda t: dict(n_buckets=0), "n_buckets", ATTN_M + STACK_M),
    C("n_buckets=[2, 3] (odd factor, module)", lambda t: dict(n_buckets=[2, 3]), "n_buckets",
      ATTN_M + STACK_M),
    C("n_buckets=[] (module)", lambda t: dict(n_buckets=[]), "n_buckets", ATTN_M + STACK_M),
    C("n_buckets=[2.0, 4] (module)", lambda t: dict(n_buckets=[2.0, 4]), "n_buckets",
      ATTN_M + STACK_M),
    C("causal='no' (module)", lambda t: dict(causal="no"), "causal", ATTN_M + STACK_M),
    C("n_chunks_before=-1 (module)", lambda t: dict(n_chunks_before=-1), "n_chunks_before",
      ATTN_M + STACK_M),
    C("n_chunks_after=1.5 (module)", lambda t: dict(n_chunks_after=1.5), "n_chunks_after",
      ATTN_M + STACK_M),
    C("dropout=1.0 (module)", lambda t: dict(dropout=1.0), "dropout",
      AX_M + ATTN_M + FF_M + STACK_M),
    C("dropout=-0.1 (module)", lambda t: dict(dropout=-0.1), "dropout",
      AX_M + ATTN_M + FF_M + STACK_M),
    C("dropout='0.1' (module)", lambda t: dict(dropout="0.1"), "dropout",
      AX_M + ATTN_M + FF_M + STACK_M),
    C("dropout=None (module)", lambda t: dict(dropout=None), "dropout",
      AX_M + ATTN_M + FF_M + REF_M),
    C("seed='a'", lambda t: dict(seed="a"), "seed", ATTN_M),
    C("attention_dropout=1.0", lambda t: dict(attention_dropout=1.0), "attention_dropout",
      ATTN_M),
    C("attention_dropout='0.1'", lambda t: dict(attention_dropout="0.1"), "attention_dropout",
      ATTN_M),
    C("fixed_rotations='yes'", lambda t: dict(fixed_rotations="yes"), "fixed_rotations",
      ATTN_M + STACK_M),
    C("dtype=torch.int64", lambda t: dict(dtype=torch.int64), r"dtype.*int64|int64.*dtype",
      AX_M + ATTN_M + FF_M + STACK_M),
    C("device='nonsense'", lambda t: dict(device="nonsense"), "device",
      AX_M + ATTN_M + FF_M + STACK_M),
    # ---- ChunkedFeedForward constructor
    C("d_ff=0", lambda t: dict(d_ff=0), "d_ff", FF_M + STACK_M),
    C("d_ff=-1", lambda t: dict(d_ff=-1), "d_ff", FF_M + STACK_M),
    C("chunk_size=0 (module)", lambda t: dict(chunk_size=0), "chunk_size", FF_M),
    C("chunk_size=4.0 (module)", lambda t: dict(chunk_size=4.0), "chunk_size", FF_M),
    C("activation='tanh' (module)", lambda t: dict(activation="tanh"), "activation",
      FF_M + STACK_M),
    C("activation=None (module)", lambda t: dict(activation=None), "activation",
      FF_M + STACK_M),
    C("bias='yes'", lambda t: dict(bias="yes"), "bias", FF_M),
    # ---- ReversibleSequence constructor
    C("blocks=None", lambda t: dict(blocks=None), "blocks|ReversibleSequence", RS_M),
    C("blocks=[Linear] (not a pair)", lambda t: dict(blocks=[torch.nn.Linear(MD, MD)]),
      "blocks|ReversibleSequence expects", RS_M),
    C("blocks=[(Linear, 'g')]", lambda t: dict(blocks=[(torch.nn.Linear(MD, MD), "g")]),
      "blocks|ReversibleSequence expects", RS_M),
    C("blocks=[(f, g, h)]", lambda t: dict(blocks=[tuple(torch.nn.Linear(MD, MD)
                                                          for _ in range(3))]),
      "blocks|ReversibleSequence expects", RS_M),
    C("reversible='no'", lambda t: dict(reversible="no"), "reversible", RS_M + STACK_M),
    C("preserve_rng_state='no'", lambda t: dict(preserve_rng_state="no"), "preserve_rng_state",
      RS_M),
    # ---- Reformer / ReformerLM constructors
    C("depth=0", lambda t: dict(depth=0), "depth", STACK_M),
    C("depth=2.0", lambda t: dict(depth=2.0), "depth", STACK_M),
    C("ff_chunk_size=0", lambda t: dict(ff_chunk_size=0), "chunk_size", STACK_M),
    C("merge='sum'", lambda t: dict(merge="sum"), "merge", STACK_M),
    # ---- options of converted HF models and mixed layers
    C("out_bias='no'", lambda t: dict(out_bias="no"), "out_bias", ATTN_M),
    C("attn_out_bias=1", lambda t: dict(attn_out_bias=1), "out_bias", STACK_M),
    C("hf_hash_seed='1'", lambda t: dict(hf_hash_seed="1"), "hf_hash_seed", ATTN_M + STACK_M),
    C("layer_norm_eps=-1", lambda t: dict(layer_norm_eps=-1.0), "layer_norm_eps", STACK_M),
    C("attn_layers two kinds for depth 1", lambda t: dict(attn_layers=["lsh", "local"]),
      "attn_layers", STACK_M),
    C("attn_layers=['global']", lambda t: dict(attn_layers=["global"]), "attn_layers",
      STACK_M),
    C("attn_layers='local'", lambda t: dict(attn_layers="local"), "attn_layers", STACK_M),
    C("local_chunk_length=0", lambda t: dict(local_chunk_length=0), "local_chunk_length",
      STACK_M),
    C("local_chunks_before=-1", lambda t: dict(local_chunks_before=-1), "local_chunks_before",
      STACK_M),
    C("local_chunks_after=1.0", lambda t: dict(local_chunks_after=1.0), "local_chunks_after",
      STACK_M),
    C("local_chunks_before=64 (local layer)",
      lambda t: dict(attn_layers=["local"], local_chunks_before=64), "n_chunks_before",
      STACK_M),
    C("pad_to_multiple_of=0", lambda t: dict(pad_to_multiple_of=0), "pad_to_multiple_of",
      STACK_M),
    C("emb_dropout=1.5", lambda t: dict(emb_dropout=1.5), "emb_dropout", LM_M),
    C("lsh_attention_dropout=1.0", lambda t: dict(lsh_attention_dropout=1.0),
      "lsh_attention_dropout", STACK_M),
    C("local_attention_dropout=-0.1", lambda t: dict(local_attention_dropout=-0.1),
      "local_attention_dropout", STACK_M),
    C("num_tokens=0", lambda t: dict(num_tokens=0), "num_tokens", LM_M),
    C("num_tokens=11.0", lambda t: dict(num_tokens=11.0), "num_tokens", LM_M),
    C("max_seq_len=0", lambda t: dict(max_seq_len=0), "max_seq_len", LM_M),
    C("max_seq_len=None", lambda t: dict(max_seq_len=None), "max_seq_len", LM_M),
    C("init_std=-1", lambda t: dict(init_std=-1.0), "init_std", AX_M + LM_M),
    C("init_std='a'", lambda t: dict(init_std="a"), "init_std", AX_M + LM_M),
    C("unknown keyword foo=1", lambda t: dict(foo=1), "foo",
      AX_M + ATTN_M + FF_M + RS_M + STACK_M),
    # ---- ReformerLM axial options (valid: shape (4, 4), dims (3, 5) for d_model 8, max 16)
    C("axial_position_shape only", lambda t: dict(axial_position_shape=(4, 4)),
      "axial_position_dims", LM_M),
    C("axial_position_dims only", lambda t: dict(axial_position_dims=(3, 5)),
      "axial_position_shape", LM_M),
    C("axial_position_shape=(4, 0)", lambda t: dict(axial_position_shape=(4, 0),
                                                    axial_position_dims=(3, 5)),
      "axial_position_shape", LM_M),
    C("axial_position_shape='44'", lambda t: dict(axial_position_shape="44",
                                                  axial_position_dims=(3, 5)),
      "axial_position_shape", LM_M),
    C("axial_position_shape (2, 4): product 8 < max_seq_len 16",
      lambda t: dict(axial_position_shape=(2, 4), axial_position_dims=(3, 5)),
      "axial_position_shape.*max_seq_len", LM_M),
    C("axial_position_dims (3, 4): sum 7 != d_model 8",
      lambda t: dict(axial_position_shape=(4, 4), axial_position_dims=(3, 4)),
      "axial_position_dims.*d_model", LM_M),
    C("axial_position_dims=(8,) for two axes",
      lambda t: dict(axial_position_shape=(4, 4), axial_position_dims=(8,)),
      "axial_position_dims", LM_M),
    C("axial_position_dims=(3, -5)",
      lambda t: dict(axial_position_shape=(4, 4), axial_position_dims=(3, -5)),
      "axial_position_dims", LM_M),
    # ---- AxialPositionEmbedding constructor
    C("axial_shape=(4, 0)", lambda t: dict(axial_shape=(4, 0)), "axial_shape", AX_M),
    C("axial_shape=(-4, 4)", lambda t: dict(axial_shape=(-4, 4)), "axial_shape", AX_M),
    C("axial_shape=(4.0, 4)", lambda t: dict(axial_shape=(4.0, 4)), "axial_shape", AX_M),
    C("axial_shape=16 (not a tuple)", lambda t: dict(axial_shape=16), "axial_shape", AX_M),
    C("axial_shape=()", lambda t: dict(axial_shape=()), "axial_shape", AX_M),
    C("axial_shape='44'", lambda t: dict(axial_shape="44"), "axial_shape", AX_M),
    C("axial_dims=(3, 0)", lambda t: dict(axial_dims=(3, 0)), "axial_dims", AX_M),
    C("axial_dims=(3, 5, 1) for two axes", lambda t: dict(axial_dims=(3, 5, 1)), "axial_dims",
      AX_M),
    C("axial_dims=None", lambda t: dict(axial_dims=None), "axial_dims", AX_M),
    # ---- AxialPositionEmbedding forward
    C("length=17 > prod(axial_shape)", lambda t: dict(length=17), "length.*16.*17", AX_F),
    C("length=0", lambda t: dict(length=0), "length", AX_F),
    C("length=2.0", lambda t: dict(length=2.0), "length", AX_F),
    C("length=None", lambda t: dict(length=None), "length", AX_F),
    C("length=tensor(5)", lambda t: dict(length=torch.tensor(5)), "length", AX_F),
    C("batch_size=0", lambda t: dict(batch_size=0), "batch_size", AX_F),
    C("batch_size='2'", lambda t: dict(batch_size="2"), "batch_size", AX_F),
    # ---- forward: x
    C("module x=None", lambda t: dict(x=None), r"\bx\b", ATTN_F + FF_F + REF_F),
    C("module x=list", lambda t: dict(x=t["x"].tolist()), r"\bx\b", ATTN_F + FF_F + REF_F),
    C("module x rank 2", lambda t: dict(x=t["x"][0]), r"\bx\b", ATTN_F + REF_F),
    C("module x rank 0", lambda t: dict(x=t["x"][0, 0, 0]), r"\bx\b", FF_F),
    C("module x last dim d_model-1", lambda t: dict(x=t["x"][..., :-1]), r"\bx\b",
      ATTN_F + FF_F + REF_F),
    C("module x float64 (parameters float32)", lambda t: dict(x=t["x"].double()), r"\bx\b",
      ATTN_F + FF_F + REF_F),
    C("module x int64", lambda t: dict(x=t["x"].long()), r"\bx\b", ATTN_F + FF_F + REF_F),
    C("module x L=0", lambda t: dict(x=t["x"][:, :0], key_padding_mask=None), r"\bx\b",
      ATTN_F + REF_F),
    C("module x on meta", lambda t: dict(x=to_meta(t["x"]), key_padding_mask=None),
      r"\bx\b", ATTN_F + FF_F + REF_F),
    # ---- forward: key_padding_mask
    C("module mask float32", lambda t: dict(key_padding_mask=t["key_padding_mask"].float()),
      MASK, ATTN_F + REF_F + LM_F),
    C("module mask (B, L-1)", lambda t: dict(key_padding_mask=t["key_padding_mask"][:, :-1]),
      MASK, ATTN_F + REF_F + LM_F),
    C("module mask (1, L)", lambda t: dict(key_padding_mask=t["key_padding_mask"][:1]),
      MASK, ATTN_F + REF_F + LM_F),
    C("module mask rank 3", lambda t: dict(key_padding_mask=t["key_padding_mask"][None]),
      MASK, ATTN_F + REF_F + LM_F),
    C("module mask=list", lambda t: dict(key_padding_mask=t["key_padding_mask"].tolist()),
      MASK, ATTN_F + REF_F + LM_F),
    C("module mask on meta", lambda t: dict(key_padding_mask=to_meta(t["key_padding_mask"])),
      MASK + "|device", ATTN_F + REF_F + LM_F),
    # ---- forward: rotations (LSHSelfAttention), dropout_seed (ChunkedFeedForward)
    C("module rotations=list", lambda t: dict(rotations=[1.0]), ROT, ATTN_F),
    C("module rotations d_head-1", lambda t: dict(rotations=torch.randn(2, 3, 2, 1)), ROT,
      ATTN_F),
    C("module rotations n_hashes 0", lambda t: dict(rotations=torch.randn(2, 4, 0, 1)), ROT,
      ATTN_F),
    C("module rotations heads 3 of 2", lambda t: dict(rotations=torch.randn(3, 4, 2, 1)), ROT,
      ATTN_F),
    C("module dropout_seed=1.5", lambda t: dict(dropout_seed=1.5), "dropout_seed", FF_F),
    C("module dropout_seed='5'", lambda t: dict(dropout_seed="5"), "dropout_seed", FF_F),
    # ---- forward: ReversibleSequence
    C("x1=None", lambda t: dict(x1=None), "x1", RS_F),
    C("x2=list", lambda t: dict(x2=t["x2"].tolist()), "x2", RS_F),
    C("x2 shape (B, L-1, d)", lambda t: dict(x2=t["x2"][:, :-1]), "x2", RS_F),
    C("x2 float64 (x1 float32)", lambda t: dict(x2=t["x2"].double()), "x2", RS_F),
    C("x2 on meta", lambda t: dict(x2=to_meta(t["x2"])), "x2", RS_F),
    C("g_kwargs='a'", lambda t: dict(g_kwargs="a"), "g_kwargs", RS_F),
    C("g_kwargs tensor requiring grad", lambda t: dict(g_kwargs=dict(
        w=torch.ones(1, requires_grad=True))), "g_kwargs|g argument", RS_F),
    C("f_kwargs tensor requiring grad", lambda t: dict(f_kwargs=dict(
        w=torch.ones(1, requires_grad=True))), "f argument|f_kwargs", RS_F),
    C("f_kwargs unknown to f (foo=1)", lambda t: dict(f_kwargs=dict(foo=1)), "foo", RS_F),
    # ---- forward: ReformerLM tokens
    C("tokens=None", lambda t: dict(tokens=None), "tokens", LM_F),
    C("tokens rank 1", lambda t: dict(tokens=t["tokens"][0]), "tokens", LM_F),
    C("tokens rank 3", lambda t: dict(tokens=t["tokens"][..., None]), "tokens", LM_F),
    C("tokens float32", lambda t: dict(tokens=t["tokens"].float()), "tokens", LM_F),
    C("tokens bool", lambda t: dict(tokens=t["tokens"] > 3), "tokens", LM_F),
    C("tokens = num_tokens", lambda t: dict(tokens=torch.full_like(t["tokens"], VOCAB)),
      "tokens|num_tokens", LM_F),
    C("tokens = -1", lambda t: dict(tokens=torch.full_like(t["tokens"], -1)),
      "tokens|num_tokens", LM_F),
    C("tokens L=0", lambda t: dict(tokens=t["tokens"][:, :0], key_padding_mask=None),
      "tokens", LM_F),
    C("tokens L = max_seq_len+1",
      lambda t: dict(tokens=torch.zeros(MB, MAX_LEN + 1, dtype=torch.long),
                     key_padding_mask=None), "max_seq_len", LM_F),
]


# ------------------------------------------------------------------------------ the tests

# Each case in this process: test_bad_input[entry:case].
test_bad_input = CATALOGUE.in_process_test()
