#!/usr/bin/env python
"""Run a HuggingFace Reformer language model on reformer_ext, and compare the two side by side.

What it does:

1. Builds a ``transformers.ReformerModelWithLMHead`` with the layer pattern of the public
   ``google/reformer-crime-and-punishment`` model: six layers alternating local and LSH
   attention, axial position embeddings, a factorised bucket count ``[64, 128]``, one hash,
   chunk length 64, d_model 256, two heads of 64, ReLU feed-forward of 512. Its weights are
   HF's random initialisation; nothing is downloaded. (Pass ``--model DIR`` to convert a model
   you saved yourself with ``save_pretrained``, e.g. the real one after downloading it.)
2. Saves it with ``save_pretrained`` and converts the directory with
   ``rx.nn.ReformerLM.from_hf``, then checks that the two give the same logits.
3. Measures, at each ``--lengths`` (default 16K and 64K tokens, batch 1), the eval forward and a
   training step (forward, cross-entropy, backward) of both models: median time, tokens per
   second, and the step's peak memory (tensor bytes, see below).
4. Prints, for each step, the largest speed-up over HF that any implementation of the same
   arithmetic could show on this machine ("speed-up bound"): HF's time divided by the time the
   step's dense products (projections, feed-forward, head; counted by
   ``dense_flops_per_token``) take at the best rate torch.mm reaches here, measured right after
   the step (``matmul_flops_per_second``). Both models spend most of
   their time in those products; only the rest (attention, hashing, sorting, element-wise work,
   memory traffic) is where an implementation can win.

Byte-level models (``google/reformer-enwik8``) have no tokenizer: a text's ids are its UTF-8
bytes plus 2 (ids 0 and 1 are reserved: 0 is padding). ``encode_bytes`` and ``decode_bytes``
below do that; the crime-and-punishment model uses a SentencePiece vocabulary of 320 instead.

HF's axial position embedding insists, in training mode, that the sequence length equals the
product of ``axial_pos_shape``; so that HF can train at each length, the model compared at
length L gets the axial shape (sqrt L, sqrt L) (the converted model has no such limit).

Memory: the most tensor bytes live at once during the step beyond what existed before it (the
parameters, the input), from PyTorch's CPU allocator events (``torch.cuda.max_memory_allocated``
on CUDA); the same accounting for both models.

    python examples/hf_reformer.py                       # 16K and 64K on the CPU (minutes)
    python examples/hf_reformer.py --lengths 4096 --repeats 1
    python examples/hf_reformer.py --model path/to/saved_reformer
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

import reformer_ext as rx
from reformer_ext._profiling import measure_peak


def encode_bytes(text: str) -> torch.Tensor:
    """enwik8-style ids: the UTF-8 bytes of ``text`` plus 2, shape (1, n)."""
    return torch.tensor([b + 2 for b in text.encode("utf-8")], dtype=torch.long)[None]


def decode_bytes(ids) -> str:
    """The inverse of encode_bytes; ids 0 and 1 (reserved) are dropped."""
    return bytes(int(i) - 2 for i in ids if int(i) >= 2).decode("utf-8", errors="replace")


def crime_and_punishment_config(length: int):
    """The public crime-and-punishment layout, with an axial shape HF can train at ``length``."""
    from transformers import ReformerConfig

    side = 2 ** (int(math.log2(length)) // 2)
    return ReformerConfig(
        attn_layers=["local", "lsh", "local", "lsh", "local", "lsh"],
        axial_pos_embds=True, axial_pos_shape=[side, length // side],
        axial_pos_embds_dim=[64, 192], hidden_size=256, feed_forward_size=512,
        num_attention_heads=2, attention_head_size=64, num_buckets=[64, 128], num_hashes=1,
        lsh_attn_chunk_length=64, local_attn_chunk_length=64, lsh_num_chunks_before=1,
        lsh_num_chunks_after=0, local_num_chunks_before=1, local_num_chunks_after=0,
        hidden_act="relu", vocab_size=320, max_position_embeddings=length, is_decoder=True,
        hash_seed=0, hidden_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0,
        local_attention_probs_dropout_prob=0.0, chunk_size_feed_forward=0, pad_token_id=0,
        eos_token_id=2)


def dense_flops_per_token(config, step: str) -> float:
    """Floating-point operations per token of a step's dense products (the projections, the
    feed-forward and the output head; attention and hashing are left out), from an HF config.
    A training step of a reversible stack computes every layer's products four times (forward,
    the backward's recompute, the two gradient products) and the head's three times."""
    d, inner = config.hidden_size, config.num_attention_heads * config.attention_head_size
    projections = {"lsh": 2 * d * inner, "local": 3 * d * inner}  # shared query/key, or q and k
    layers = sum(projections[kind] + inner * d + 2 * d * config.feed_forward_size
                 for kind in config.attn_layers)
    head = 2 * d * config.vocab_size  # HF's head maps the two concatenated streams
    layer_passes, head_passes = (1, 1) if step == "forward" else (4, 3)
    return 2.0 * (layer_passes * layers + head_passes * head)


def matmul_flops_per_second(config, device, rows: int = 4096, repeats: int = 9) -> float:
    """The best rate torch.mm (MKL or oneDNN on the CPU, cuBLAS on CUDA) reaches here for the
    feed-forward's first product on ``rows`` rows: the fastest of ``repeats``, so that the bound
    it gives is not lowered by a slow moment of a shared machine."""
    a = torch.randn(rows, config.hidden_size, device=device)
    b = torch.randn(config.hidden_size, config.feed_forward_size, device=device)
    seconds = min(call_seconds(lambda: torch.mm(a, b), repeats, device))
    return 2.0 * rows * a.shape[1] * b.shape[1] / seconds


def call_seconds(step, repeats: int, device) -> list:
    """Wall-clock seconds of ``repeats`` calls of ``step`` after a warm-up call (on CUDA each
    measured up to the end of the work it queued)."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    step()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def training_step(model, tokens, logits_of):
    def step():
        model.zero_grad(set_to_none=True)
        logits = logits_of(model, tokens)
        loss = F.cross_entropy(logits[0, :-1], tokens[0, 1:])
        loss.backward()
    return step


def forward_step(model, tokens, logits_of):
    def step():
        with torch.inference_mode():
            logits_of(model, tokens)
    return step


def hf_logits(model, tokens):
    return model(input_ids=tokens).logits


def our_logits(model, tokens):
    return model(tokens)


def compare(hf_model, ours, length: int, repeats: int, device) -> list[list[str]]:
    tokens = torch.randint(2, hf_model.config.vocab_size, (1, length), device=device)
    rows = []
    for what, make, mode in (("forward", forward_step, "eval"),
                             ("training step", training_step, "train")):
        results = {}
        for name, model, logits_of in (("HF", hf_model, hf_logits), ("ours", ours, our_logits)):
            model.train(mode == "train")
            step = make(model, tokens, logits_of)
            seconds = statistics.median(call_seconds(step, repeats, device))
            model.zero_grad(set_to_none=True)
            peak_mib, _ = measure_peak(step, device)
            results[name] = (seconds, peak_mib)
        (t_hf, m_hf), (t_ours, m_ours) = results["HF"], results["ours"]
        # the dense products alone, at torch.mm's best rate, bound any implementation's time
        rate = matmul_flops_per_second(hf_model.config, device)
        floor = dense_flops_per_token(hf_model.config, what) * length / rate
        rows.append([f"{length}", what, f"{length / t_hf:,.0f}", f"{length / t_ours:,.0f}",
                     f"{t_hf / t_ours:.2f}x", f"{t_hf / floor:.2f}x", f"{rate / 1e9:.0f}",
                     f"{m_hf:,.0f}", f"{m_ours:,.0f}", f"{m_ours / m_hf:.2f}"])
        print("  " + "  ".join(rows[-1]), flush=True)
    return rows


def check_logits(hf_model, ours, device) -> float:
    """Largest relative difference of the logits over a short random input (eval mode), of a
    length that is not a multiple of the chunk length (HF pads it)."""
    hf_model.eval()
    ours.eval()
    length = min(300, hf_model.config.max_position_embeddings - 1)
    tokens = torch.randint(2, hf_model.config.vocab_size, (1, length), device=device)
    with torch.inference_mode():
        a, b = hf_logits(hf_model, tokens), our_logits(ours, tokens)
    return ((a - b).abs().max() / a.abs().max()).item()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None,
                   help="a directory written by save_pretrained (default: build the "
                        "crime-and-punishment layout with random weights at each length)")
    p.add_argument("--lengths", default="16384,65536", help="comma-separated sequence lengths")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)
    try:
        from transformers import ReformerModelWithLMHead
    except ImportError:
        raise SystemExit("this example needs transformers: pip install transformers")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rx.require_device(device)
    torch.manual_seed(0)
    header = ["L", "step", "HF tok/s", "ours tok/s", "speed-up", "speed-up bound",
              "torch.mm GFLOP/s", "HF MiB", "ours MiB", "memory ours/HF"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; "
          f"{args.repeats} timed repeats after a warm-up, medians")
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        with tempfile.TemporaryDirectory() as directory:
            if args.model is None:
                ReformerModelWithLMHead(crime_and_punishment_config(length)).save_pretrained(
                    directory)
                source = directory
            else:
                source = args.model
            hf_model = ReformerModelWithLMHead.from_pretrained(source).to(device)
            ours = rx.nn.ReformerLM.from_hf(source).to(device)
        print(f"  L={length}: logits of the converted model vs HF's, relative difference "
              f"{check_logits(hf_model, ours, device):.1e}", flush=True)
        rows += compare(hf_model, ours, length, args.repeats, device)
        del hf_model, ours
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
