#!/usr/bin/env python
"""Train a character-level ReformerLM on a text file, with checkpoints, resume and sampling.

The vocabulary is the set of characters of the text. 90% of the text is used for training
(random windows of ``--seq-len + 1`` characters), the last 10% for validation. Progress is
reported in bits per character (bpc: the cross-entropy in bits; 8 would be knowing nothing about
bytes, ~1 is good English). The checkpoint holds the model, the optimizer, the step, the
vocabulary and the model settings, so ``--resume`` continues a run exactly where it stopped
(with the same data order) and ``--sample-only`` needs nothing but the checkpoint.

The default text, ``examples/data/reformer_notes.txt``, is a short plain-English explanation of
the Reformer written for this repository (same license as the repository). It is small (a few
thousand characters), so the model soon memorises it; point ``--text`` at any larger UTF-8 file
(a book, source code, logs) for a real language model.

    python examples/train_char_lm.py                                   # a few minutes on a CPU
    python examples/train_char_lm.py --steps 2000 --resume             # continue training
    python examples/train_char_lm.py --sample-only --prompt "The Reformer" --sample-len 400
    python examples/train_char_lm.py --text my_book.txt --seq-len 1024 --checkpoint book.pt

Distributed: started by ``torchrun --nproc_per_node N`` (WORLD_SIZE > 1), the same script
trains with FSDP2 per layer (reformer_ext.nn.shard_reformer: each process holds 1/N of the
weights, gradients and optimizer state), gloo on the CPU, NCCL on GPUs (one per process).
Every process draws the same global batch of ``--batch`` windows (which N must divide) and
trains on its slice; dropout masks follow the whole batch (set_dropout_sample_offset).
Checkpoints are torch.distributed.checkpoint directories (``--checkpoint`` default
``char_lm.dcp``; each process writes its shards), resumable with any N, and ``--sample-only``
reads them in one process too.

    torchrun --nproc_per_node 2 examples/train_char_lm.py --device cpu --steps 200
    torchrun --nproc_per_node 2 examples/train_char_lm.py --device cpu --steps 400 --resume
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

import reformer_ext as rx

DEFAULT_TEXT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                            "reformer_notes.txt")
# settings that define the model's shape: stored in the checkpoint, taken from it on resume
MODEL_KEYS = ("seq_len", "d_model", "depth", "heads", "bucket_size", "n_hashes")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--text", default=DEFAULT_TEXT, help="UTF-8 text file to train on")
    p.add_argument("--checkpoint", default="char_lm.pt", help="checkpoint file (written and read)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--sample-only", action="store_true",
                   help="load --checkpoint and print a sample; no training")
    m = p.add_argument_group("model (taken from the checkpoint when resuming)")
    m.add_argument("--seq-len", type=int, default=256, help="training window (max_seq_len)")
    m.add_argument("--d-model", type=int, default=128)
    m.add_argument("--depth", type=int, default=2)
    m.add_argument("--heads", type=int, default=4)
    m.add_argument("--bucket-size", type=int, default=32)
    m.add_argument("--n-hashes", type=int, default=2)
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, default=600, help="train until this many steps in total")
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--eval-every", type=int, default=100, help="validation bpc every N steps")
    t.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps (and at the end)")
    t.add_argument("--seed", type=int, default=0)
    s = p.add_argument_group("sampling")
    s.add_argument("--prompt", default="The ", help="text the sample continues")
    s.add_argument("--sample-len", type=int, default=300, help="characters to generate (0: none)")
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (0: all)")
    p.add_argument("--device", default=rx.default_device().type)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        rx.require_device(torch.device(args.device))
    except RuntimeError as e:
        p.error(str(e))
    for name in MODEL_KEYS + ("batch", "eval_every", "save_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.steps < 0 or args.sample_len < 0 or args.top_k < 0:
        p.error("--steps, --sample-len and --top-k must be >= 0")
    if args.temperature <= 0:
        p.error("--temperature must be > 0")
    return args


class CharCodec:
    """Characters <-> token ids, over a fixed alphabet (a string of distinct characters)."""

    def __init__(self, alphabet: str):
        self.alphabet = alphabet
        self.index = {c: i for i, c in enumerate(alphabet)}

    @classmethod
    def from_text(cls, text: str) -> "CharCodec":
        return cls("".join(sorted(set(text))))

    def encode(self, text: str) -> torch.Tensor:
        unknown = sorted(set(text) - self.index.keys())
        if unknown:
            raise ValueError(f"characters not in the model's alphabet: {''.join(unknown)!r}")
        return torch.tensor([self.index[c] for c in text], dtype=torch.int64)

    def decode(self, ids) -> str:
        return "".join(self.alphabet[i] for i in ids)


def build_model(config: dict, num_tokens: int, device) -> rx.nn.ReformerLM:
    return rx.nn.ReformerLM(num_tokens, config["d_model"], config["depth"], config["heads"],
                            config["seq_len"], causal=True, bucket_size=config["bucket_size"],
                            n_hashes=config["n_hashes"]).to(device)


def random_windows(data: torch.Tensor, batch: int, length: int, generator) -> torch.Tensor:
    """(batch, length + 1) random windows of ``data`` (inputs and the next-character targets)."""
    starts = torch.randint(0, data.numel() - length, (batch,), generator=generator)
    return torch.stack([data[s:s + length + 1] for s in starts.tolist()])


def bits_per_char(model, windows: torch.Tensor) -> torch.Tensor:
    logits = model(windows[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    return loss / math.log(2)


@torch.no_grad()
def validation_bpc(model, data: torch.Tensor, seq_len: int, device) -> float:
    """bpc over consecutive windows covering the validation text (at most 32 windows)."""
    model.eval()
    n = min(32, (data.numel() - 1) // seq_len)
    windows = torch.stack([data[i * seq_len:i * seq_len + seq_len + 1] for i in range(n)])
    bpc = bits_per_char(model, windows.to(device)).item()
    model.train()
    return bpc


@torch.no_grad()
def sample(model, codec: CharCodec, prompt: str, length: int, *, temperature: float,
           top_k: int, seq_len: int, device, generator=None) -> str:
    """Generate ``length`` characters after ``prompt``, one at a time, each from the model's
    distribution over the last ``seq_len`` characters."""
    model.eval()
    ids = codec.encode(prompt).tolist() if prompt else [0]
    for _ in range(length):
        context = torch.tensor([ids[-seq_len:]], device=device)
        logits = model(context)[0, -1].float() / temperature
        if top_k:
            kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1).cpu()
        ids.append(int(torch.multinomial(probs, 1, generator=generator)))
    text = codec.decode(ids)
    return text if prompt else text[1:]


def save_checkpoint(path: str, model, optimizer, step: int, codec: CharCodec, config: dict,
                    data_rng: torch.Generator) -> None:
    # the RNG states make a resumed run continue exactly like an uninterrupted one: the data
    # order, and the fresh hash rotations that training draws from torch's default generators
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "alphabet": codec.alphabet, "config": config, "data_rng": data_rng.get_state(),
             "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash while saving never leaves a truncated checkpoint


def load_checkpoint(path: str, device) -> dict:
    if not os.path.exists(path):
        raise FileNotFoundError(f"--checkpoint {path!r} does not exist (train first, without --resume)")
    # weights_only: a checkpoint holds tensors and plain values only, so nothing in a file from
    # elsewhere gets to run code while it is read
    return torch.load(path, map_location=device, weights_only=True)


class Distributed:
    """This process' place under torchrun (WORLD_SIZE > 1): rank, world size, device."""

    def __init__(self, device_type: str):
        import torch.distributed as dist

        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if device_type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device(device_type)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        self.dist = dist

    def mean(self, value: torch.Tensor) -> float:
        value = value.detach().clone()
        self.dist.all_reduce(value)
        return value.item() / self.world

    def close(self):
        self.dist.destroy_process_group()


def _dcp_meta(path: str) -> str:
    return os.path.join(path, "char_lm_meta.pt")


def save_distributed_checkpoint(path, model, optimizer, step, codec, config, data_rng, ddp):
    """The DCP checkpoint of a sharded run: every rank writes its shards (model, optimizer, the
    CPU generator); rank 0 adds the vocabulary, settings and data order in a small file."""
    rx.nn.save_sharded_checkpoint(path, model, optimizer, step=step)
    if ddp.rank == 0:
        torch.save({"alphabet": codec.alphabet, "config": config, "step": step,
                    "data_rng": data_rng.get_state()}, _dcp_meta(path))
    ddp.dist.barrier()


def load_distributed_meta(path: str) -> dict:
    if not os.path.exists(_dcp_meta(path)):
        raise FileNotFoundError(f"--checkpoint {path!r} is not a checkpoint of a distributed run")
    return torch.load(_dcp_meta(path), weights_only=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return main_distributed(args)
    device = torch.device(args.device)
    if args.sample_only and os.path.isdir(args.checkpoint):  # a distributed run's checkpoint
        meta = load_distributed_meta(args.checkpoint)
        codec = CharCodec(meta["alphabet"])
        model = build_model(meta["config"], len(codec.alphabet), device)
        rx.nn.load_sharded_checkpoint(args.checkpoint, model)
        print(sample(model, codec, args.prompt, args.sample_len, temperature=args.temperature,
                     top_k=args.top_k, seq_len=meta["config"]["seq_len"], device=device))
        return 0

    state = load_checkpoint(args.checkpoint, device) if (args.resume or args.sample_only) else None
    if args.sample_only:
        codec = CharCodec(state["alphabet"])
        model = build_model(state["config"], len(codec.alphabet), device)
        model.load_state_dict(state["model"])
        print(sample(model, codec, args.prompt, args.sample_len, temperature=args.temperature,
                     top_k=args.top_k, seq_len=state["config"]["seq_len"], device=device))
        return 0

    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    if state is None:
        config, codec = {k: getattr(args, k) for k in MODEL_KEYS}, CharCodec.from_text(text)
    else:
        config, codec = state["config"], CharCodec(state["alphabet"])
    model = build_model(config, len(codec.alphabet), device)
    data = codec.encode(text)
    split = int(0.9 * data.numel())
    train_data, valid_data = data[:split], data[split:]
    if min(train_data.numel(), valid_data.numel()) <= config["seq_len"]:
        raise ValueError(f"--text has {data.numel()} characters: too short for windows of "
                         f"{config['seq_len']} (10% of it is kept for validation); lower --seq-len")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    data_rng = torch.Generator().manual_seed(args.seed)
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        data_rng.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        step = state["step"]
        print(f"resumed from {args.checkpoint} at step {step}")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{os.path.basename(args.text)}: {data.numel()} characters, alphabet of "
          f"{len(codec.alphabet)}; ReformerLM {config['depth']} layers, d_model {config['d_model']}, "
          f"{n_params / 1e6:.2f}M parameters, windows of {config['seq_len']}, on {device}")

    progress = None
    if not args.no_progress and step < args.steps:
        from tqdm import tqdm

        progress = tqdm(total=args.steps, initial=step, unit="step", file=sys.stderr)
    model.train()
    t0 = time.perf_counter()
    start_step = step
    while step < args.steps:
        windows = random_windows(train_data, args.batch, config["seq_len"], data_rng).to(device)
        loss = bits_per_char(model, windows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if progress is not None:
            progress.update(1)
            progress.set_postfix(train_bpc=f"{loss.item():.3f}")
        if step % args.eval_every == 0 or step == args.steps:
            msg = (f"step {step}: train bpc {loss.item():.3f}, validation bpc "
                   f"{validation_bpc(model, valid_data, config['seq_len'], device):.3f}")
            (progress.write if progress is not None else print)(msg)
        if step % args.save_every == 0 or step == args.steps:
            save_checkpoint(args.checkpoint, model, optimizer, step, codec, config, data_rng)
    if progress is not None:
        progress.close()
    if step > start_step:
        print(f"{step - start_step} steps in {time.perf_counter() - t0:.0f} s; "
              f"checkpoint: {args.checkpoint}")
    else:
        print(f"already at step {step} (--steps {args.steps}); nothing to train")

    if args.sample_len:
        print("\nsample:\n" + sample(model, codec, args.prompt, args.sample_len,
                                      temperature=args.temperature, top_k=args.top_k,
                                      seq_len=config["seq_len"], device=device))
    return 0


def main_distributed(args) -> int:
    """The torchrun mode: FSDP2 per layer, DCP checkpoints (see the module docstring)."""
    import warnings
    # FSDP warns that the model's output (the logits) is a view; nothing modifies it in place
    warnings.filterwarnings("ignore", message=r".*\(FSDPReformerLM\) returned a view tensor")
    ddp = Distributed(torch.device(args.device).type)
    try:
        return _train_distributed(args, ddp)
    finally:
        ddp.close()


def _train_distributed(args, ddp) -> int:
    say = print if ddp.rank == 0 else (lambda *a, **k: None)
    device = ddp.device
    if args.batch % ddp.world:
        raise SystemExit(f"--batch {args.batch} must be a multiple of the number of processes "
                         f"({ddp.world})")
    checkpoint = "char_lm.dcp" if args.checkpoint == "char_lm.pt" else args.checkpoint
    meta = load_distributed_meta(checkpoint) if (args.resume or args.sample_only) else None
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    if meta is None:
        config, codec = {k: getattr(args, k) for k in MODEL_KEYS}, CharCodec.from_text(text)
    else:
        config, codec = meta["config"], CharCodec(meta["alphabet"])
    model = build_model(config, len(codec.alphabet), device)
    local = args.batch // ddp.world
    rx.nn.set_dropout_sample_offset(model, ddp.rank * local)
    rx.nn.shard_reformer(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    data_rng = torch.Generator().manual_seed(args.seed)
    step = 0
    if meta is not None:
        step = rx.nn.load_sharded_checkpoint(checkpoint, model, optimizer, step=0)["step"]
        data_rng.set_state(meta["data_rng"])
        say(f"resumed from {checkpoint} at step {step}")
    if args.sample_only:  # every process runs the model (its forward gathers the shards)
        say(sample(model, codec, args.prompt, args.sample_len, temperature=args.temperature,
                   top_k=args.top_k, seq_len=config["seq_len"], device=device))
        return 0
    data = codec.encode(text)
    split = int(0.9 * data.numel())
    train_data, valid_data = data[:split], data[split:]
    if min(train_data.numel(), valid_data.numel()) <= config["seq_len"]:
        raise ValueError(f"--text has {data.numel()} characters: too short for windows of "
                         f"{config['seq_len']}; lower --seq-len")
    n_params = sum(p.numel() for p in model.parameters())  # DTensors count their global size
    say(f"{os.path.basename(args.text)}: {data.numel()} characters; ReformerLM "
        f"{config['depth']} layers, {n_params / 1e6:.2f}M parameters, FSDP2 per layer over "
        f"{ddp.world} processes on {device.type}, {local} windows each")
    model.train()
    t0, start_step = time.perf_counter(), step
    part = slice(ddp.rank * local, (ddp.rank + 1) * local)
    while step < args.steps:
        # every process draws the same global batch and keeps its slice
        windows = random_windows(train_data, args.batch, config["seq_len"], data_rng)[part]
        loss = bits_per_char(model, windows.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # FSDP averages the gradients: those of the whole batch's mean
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % args.eval_every == 0 or step == args.steps:
            train_bpc = ddp.mean(loss)
            say(f"step {step}: train bpc {train_bpc:.3f}, validation bpc "
                f"{validation_bpc(model, valid_data, config['seq_len'], device):.3f}")
        if step % args.save_every == 0 or step == args.steps:
            save_distributed_checkpoint(checkpoint, model, optimizer, step, codec, config,
                                        data_rng, ddp)
    if step > start_step:
        say(f"{step - start_step} steps in {time.perf_counter() - t0:.0f} s; "
            f"checkpoint: {checkpoint}")
    if args.sample_len:
        text = sample(model, codec, args.prompt, args.sample_len, temperature=args.temperature,
                      top_k=args.top_k, seq_len=config["seq_len"], device=device)
        say("\nsample:\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
