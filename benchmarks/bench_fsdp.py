#!/usr/bin/env python
"""FSDP2 per-layer sharding (reformer_ext.nn.shard_reformer): memory per rank against the number
of processes N, for a reversible ReformerLM (default depth 12) trained with Adam.

For each N (``--worlds``, default 1,2,4) N processes start over gloo on the CPU (``--device
cuda`` : NCCL, one GPU per rank), shard the model per layer branch (fully_shard on every
``layers[i].f`` and ``layers[i].g``, then the root), run one warm-up step (Adam's state exists
from then on), set the gradients to None and measure one forward + backward, then the
optimizer step, with reformer_ext._profiling.measure_step_memory: tensor bytes from the
profiler's allocation events (CPU) or the caching allocator (CUDA), beyond what was live before.
Per rank (rank 0 printed; the others agree to a few bytes):

  params         bytes of the rank's parameter shards (DTensor local tensors)
  grads          bytes of its gradient shards after the backward
  adam           bytes of its optimizer state (exp_avg, exp_avg_sq; the step counters)
  state          params + grads + adam: what the rank keeps between steps
  fwd+bwd extra  the forward + backward's peak beyond what was live before it, not counting the
                 gradient shards: gathered weights (one layer branch at a time, plus FSDP's
                 prefetch of the next), the root's gathered weights (embeddings, head: the root
                 keeps them for the whole step), unsharded gradients before their
                 reduce-scatter, activations
  peak           state + fwd+bwd extra: the rank's tensor-byte high point in the backward
  Adam step extra  optimizer.step()'s own peak (its foreach temporaries, 1/N of the model)

and, for comparison, the whole model's parameter bytes, ``4 x model / N`` (params + grads + 2
Adam moments), and the largest layer's weight bytes.

    python benchmarks/bench_fsdp.py                      # depth 12, N = 1, 2, 4 (about 1 min)
    python benchmarks/bench_fsdp.py --depth 4 --worlds 1,2
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import reformer_ext as rx  # noqa: E402
from reformer_ext._profiling import measure_step_memory  # noqa: E402

MIB = 2 ** 20


def _bytes(t) -> int:
    if t is None:
        return 0
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


class _LocalGrad:
    """A parameter as measure_step_memory reads it (``.grad``, ``.layout``), with the local
    shard of a DTensor's gradient."""

    def __init__(self, param):
        self.param, self.layout = param, torch.strided

    @property
    def grad(self):
        g = self.param.grad
        return g.to_local() if hasattr(g, "to_local") else g


def _model(args, device):
    torch.manual_seed(0)
    return rx.nn.ReformerLM(args.vocab, args.d_model, args.depth, args.heads, args.length,
                            bucket_size=args.bucket_size, n_hashes=2, dropout=0.1,
                            reversible=True, device=device)


def _worker(rank, world, store, args, out):
    torch.set_num_threads(args.threads)
    warnings_off()
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    device = torch.device(f"cuda:{rank}" if cuda else "cpu")
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{store}",
                            rank=rank, world_size=world)
    try:
        model = _model(args, device)
        model_bytes = sum(_bytes(p) for p in model.parameters())
        layer_bytes = max(sum(_bytes(p) for p in block.parameters())
                          for block in model.reformer.layers)
        rx.nn.set_dropout_sample_offset(model, rank * args.batch)
        rx.nn.shard_reformer(model)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(rank)
        tokens = torch.randint(0, args.vocab, (args.batch, args.length + 1), generator=gen)
        tokens = tokens.to(device)

        def forward_backward():
            logits = model(tokens[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, args.vocab), tokens[:, 1:].reshape(-1))
            loss.backward()

        forward_backward()  # warm-up
        opt.step()  # Adam's state exists from here on
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        m = measure_step_memory(forward_backward, device,
                                [_LocalGrad(p) for p in model.parameters()])
        seconds = time.perf_counter() - t0
        m_opt = measure_step_memory(opt.step, device)
        params = sum(_bytes(p) for p in model.parameters())
        grads = sum(_bytes(p.grad) for p in model.parameters())
        adam = sum(_bytes(v) for s in opt.state.values() for v in s.values()
                   if isinstance(v, torch.Tensor))
        row = dict(world=world, model=model_bytes, layer=layer_bytes, params=params,
                   grads=grads, adam=adam, extra=m.activations, peak_step=m.peak,
                   opt_extra=m_opt.peak,
                   note=m.note, seconds=seconds)
        rows = [None] * world
        dist.all_gather_object(rows, row)
        if rank == 0:
            torch.save(rows, out)
    finally:
        dist.destroy_process_group()


def warnings_off():
    import warnings
    warnings.filterwarnings("ignore", message=".*returned a view tensor.*")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--bucket-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1, help="samples per rank")
    parser.add_argument("--worlds", default="1,2,4")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    worlds = [int(w) for w in args.worlds.split(",")]
    results = []
    for world in worlds:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "rows.pt")
            mp.spawn(_worker, args=(world, os.path.join(tmp, "store"), args, out),
                     nprocs=world, join=True)
            results.append(torch.load(out))
    cpu = platform.processor() or platform.machine()
    print(f"ReformerLM(vocab={args.vocab}, d_model={args.d_model}, depth={args.depth}, "
          f"heads={args.heads}, L={args.length}), reversible, dropout 0.1, Adam; "
          f"{args.batch} sample(s) per rank; {args.device} ({cpu}, {os.cpu_count()} cores), "
          f"torch {torch.__version__}, {'NCCL' if args.device == 'cuda' else 'gloo'}")
    first = results[0][0]
    print(f"model parameters {first['model'] / MIB:.2f} MiB; largest layer "
          f"{first['layer'] / MIB:.2f} MiB (f + g)\n")
    print("| N | params | grads | adam | state | 4 x model / N | fwd+bwd extra | peak | "
          "peak - 4 x model / N | Adam step extra | fwd+bwd time (profiled) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for rows in results:
        r = rows[0]
        state = r["params"] + r["grads"] + r["adam"]
        ideal = 4 * r["model"] / r["world"]
        extra = r["extra"]
        peak = None if extra is None else r["params"] + r["adam"] + r["grads"] + extra
        fmt = (lambda b: "n/a" if b is None else f"{b / MIB:.2f}")
        print(f"| {r['world']} | {fmt(r['params'])} | {fmt(r['grads'])} | {fmt(r['adam'])} | "
              f"{fmt(state)} | {fmt(ideal)} | {fmt(extra)} | {fmt(peak)} | "
              f"{fmt(None if peak is None else peak - ideal)} | {fmt(r['opt_extra'])} | "
              f"{r['seconds']:.2f} s |")
        spread = max(abs(x["params"] - r["params"]) for x in rows)
        if spread > 0.01 * r["params"]:
            print(f"  (ranks differ: params from {min(x['params'] for x in rows)} to "
                  f"{max(x['params'] for x in rows)} bytes)")
    print("\nMiB per rank (rank 0). fwd+bwd extra: the forward + backward's tensor-byte peak "
          "beyond what was live before it, less the gradient shards (gathered weights, "
          "unsharded gradients before their reduce-scatter, activations); peak = state + fwd+bwd "
          "extra. Adam step extra: optimizer.step()'s own peak (foreach temporaries).")


if __name__ == "__main__":
    main()
