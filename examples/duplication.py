#!/usr/bin/env python
"""The Reformer paper's synthetic duplication task (Kitaev et al. 2020, §2.1 and Table 2).

Every sequence is ``0 w 0 w``: a separator token 0, a random word ``w`` of ``word_len`` symbols
drawn uniformly from ``1 .. vocab-1``, then the same again. A causal language model reads it left
to right; the first copy is unpredictable, the second can be predicted exactly by attending to the
first copy. Loss and accuracy are measured on the second copy of ``w`` only, as in the paper.

A one-layer ReformerLM is trained with LSH attention of ``--train-hashes`` rounds, then the SAME
weights are evaluated with

- full attention: a model built with ``bucket_size >= L`` and one hash round, so that the whole
  sequence is a single chunk and every query sees every (causally allowed) key. This is exact
  softmax attention over the shared query/keys, with the same key normalisation and the same
  masks as LSH attention (docs/semantics.md §1: a token attends to itself only when nothing else is allowed);
  only the bucketing is gone. No weight depends on ``bucket_size`` or ``n_hashes``, so the
  trained state_dict loads unchanged;
- LSH attention with 1, 2, 4 and 8 hash rounds (``--eval-hashes``),

and the accuracies are printed as a table like the paper's Table 2 (one row per training
setting; run the script several times with different ``--train-hashes`` to fill more rows).

The default is CPU-sized (a word of 63 symbols, L = 128, vocabulary 64, bucket size 16, so each
round splits the sequence into 8 chunks and LSH has to find the matching position): 1200 steps
of about 0.2 s of CPU time each; the model usually reaches 100% on its training batches within
the first 300. The paper's
setting is ``--word-len 511 --vocab 128 --d-model 256 --heads 4 --bucket-size 64 --batch 64
--steps 150000`` (hours on a GPU).

    python examples/duplication.py                       # ~5 minutes on 2 idle CPU cores
    python examples/duplication.py --train-hashes 1      # the paper's LSH-1 training row
    python examples/duplication.py --steps 50 --eval-batches 1   # a smoke run
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F

import reformer_ext as rx


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--word-len", type=int, default=63,
                   help="symbols in w; the sequence length is L = 2 * (word_len + 1)")
    p.add_argument("--vocab", type=int, default=64, help="vocabulary size including the separator 0")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--d-ff", type=int, default=256)
    p.add_argument("--bucket-size", type=int, default=16)
    p.add_argument("--train-hashes", type=int, default=4, help="LSH rounds while training")
    p.add_argument("--eval-hashes", default="1,2,4,8",
                   help="comma-separated LSH rounds to evaluate with (full attention is always evaluated)")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100, help="linear learning-rate warm-up steps")
    p.add_argument("--eval-batches", type=int, default=8, help="batches per evaluation setting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=rx.default_device().type)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        rx.require_device(torch.device(args.device))
    except RuntimeError as e:
        p.error(str(e))
    for name in ("word_len", "vocab", "d_model", "heads", "d_ff", "bucket_size", "train_hashes",
                 "steps", "batch", "eval_batches"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.vocab < 3:
        p.error("--vocab must be >= 3 (the separator and at least two symbols)")
    try:
        args.eval_hashes = [int(h) for h in args.eval_hashes.split(",") if h.strip()]
    except ValueError:
        p.error(f"--eval-hashes must be comma-separated integers, got {args.eval_hashes!r}")
    if any(h < 1 for h in args.eval_hashes):
        p.error("--eval-hashes entries must be >= 1")
    return args


def make_batch(batch: int, word_len: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, 2 * (word_len + 1)) int64 sequences ``0 w 0 w``."""
    word = torch.randint(1, vocab, (batch, word_len), generator=generator)
    sep = torch.zeros(batch, 1, dtype=torch.int64)
    return torch.cat([sep, word, sep, word], dim=1)


def second_half_slice(word_len: int) -> slice:
    """The logits positions whose targets are the second copy of w.

    Position t predicts token t + 1; the second copy occupies tokens word_len + 2 .. 2*word_len + 1,
    so it is predicted from positions word_len + 1 .. 2*word_len.
    """
    return slice(word_len + 1, 2 * word_len + 1)


def loss_and_accuracy(model, tokens: torch.Tensor, word_len: int):
    """Cross-entropy and accuracy on the second copy of w."""
    logits = model(tokens)[:, second_half_slice(word_len)]
    targets = tokens[:, word_len + 2:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    accuracy = (logits.argmax(-1) == targets).float().mean()
    return loss, accuracy


def build_model(args, *, n_hashes: int, bucket_size: int) -> rx.nn.ReformerLM:
    length = 2 * (args.word_len + 1)
    return rx.nn.ReformerLM(args.vocab, args.d_model, depth=1, n_heads=args.heads,
                            max_seq_len=length, causal=True, d_ff=args.d_ff,
                            bucket_size=bucket_size, n_hashes=n_hashes).to(args.device)


def full_attention_bucket_size(args) -> int:
    """A bucket (chunk) size >= L: the whole sequence is one chunk, i.e. exact attention."""
    return 2 * (args.word_len + 1)


def train(args, model, progress=None) -> list[tuple[int, float, float]]:
    """Adam with linear warm-up; returns (step, loss, accuracy) every 50 steps."""
    gen = torch.Generator().manual_seed(args.seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup))
    model.train()
    history = []
    for step in range(1, args.steps + 1):
        tokens = make_batch(args.batch, args.word_len, args.vocab, gen).to(args.device)
        loss, acc = loss_and_accuracy(model, tokens, args.word_len)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc.item():.3f}")
        if step % 50 == 0 or step == args.steps:
            history.append((step, loss.item(), acc.item()))
    return history


@torch.no_grad()
def evaluate(args, state_dict, *, n_hashes: int, bucket_size: int) -> float:
    """Accuracy on the second copy of w, with the trained weights in a model of the given
    attention setting (eval mode: the layer's fixed, seeded rotations)."""
    model = build_model(args, n_hashes=n_hashes, bucket_size=bucket_size)
    model.load_state_dict(state_dict)
    model.eval()
    gen = torch.Generator().manual_seed(args.seed + 12345)  # the same batches for every setting
    correct = 0.0
    for _ in range(args.eval_batches):
        tokens = make_batch(args.batch, args.word_len, args.vocab, gen).to(args.device)
        correct += loss_and_accuracy(model, tokens, args.word_len)[1].item()
    return correct / args.eval_batches


def results_table(train_hashes: int, accuracies: dict[str, float]) -> str:
    header = "| training | " + " | ".join(f"eval {k}" for k in accuracies) + " |"
    rule = "| :--- |" + " ---: |" * len(accuracies)
    row = f"| LSH-{train_hashes} | " + " | ".join(f"{100 * a:.1f}%" for a in accuracies.values()) + " |"
    return "\n".join([header, rule, row])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    length = 2 * (args.word_len + 1)
    print(f"duplication task: L={length} (w of {args.word_len} symbols), vocab {args.vocab}, "
          f"1 layer, d_model {args.d_model}, {args.heads} heads, bucket size {args.bucket_size}, "
          f"{math.ceil(length / args.bucket_size)} chunks per round; training with LSH-"
          f"{args.train_hashes}, {args.steps} steps of batch {args.batch} on {args.device}")
    model = build_model(args, n_hashes=args.train_hashes, bucket_size=args.bucket_size)

    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=args.steps, desc="training", unit="step", file=sys.stderr)
    t0 = time.perf_counter()
    history = train(args, model, progress)
    train_s = time.perf_counter() - t0
    if progress is not None:
        progress.close()
    shown = history[:: max(1, len(history) // 8)]
    if shown[-1] != history[-1]:
        shown.append(history[-1])
    for step, loss, acc in shown:
        print(f"  step {step:6d}: loss {loss:.4f}, accuracy {100 * acc:.1f}% (training batch)")
    print(f"training took {train_s / 60:.1f} min")

    state = model.state_dict()
    settings = {"full": (1, full_attention_bucket_size(args))}
    settings.update({f"LSH-{h}": (h, args.bucket_size) for h in args.eval_hashes})
    accuracies = {}
    for name, (n_hashes, bucket_size) in settings.items():
        accuracies[name] = evaluate(args, state, n_hashes=n_hashes, bucket_size=bucket_size)
    print(f"\naccuracy on the second copy of w ({args.eval_batches} batches of {args.batch}):\n")
    print(results_table(args.train_hashes, accuracies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
