"""Smoke tests of examples/duplication.py, examples/train_char_lm.py and examples/hf_reformer.py
with tiny sizes, and the two claims the examples rest on:

- full attention in duplication.py (a ReformerLM built with bucket_size >= L and one hash round)
  is exact softmax attention over the shared query/keys, with the masks of
  docs/semantics.md §1;
- train_char_lm.py's --resume continues a run exactly like an uninterrupted one.
"""

import importlib.util
import math
import os
import re

import pytest
import torch

import reformer_ext as rx

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def keep_torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------------------------
# duplication


def test_duplication_batches_are_0_w_0_w():
    dup = load_example("duplication")
    tokens = dup.make_batch(3, 5, 10, torch.Generator().manual_seed(0))
    assert tokens.shape == (3, 12)
    assert (tokens[:, 0] == 0).all() and (tokens[:, 6] == 0).all()
    assert torch.equal(tokens[:, 1:6], tokens[:, 7:12])
    assert ((tokens[:, 1:6] >= 1) & (tokens[:, 1:6] < 10)).all()
    # the evaluated positions predict exactly the second copy of w
    assert torch.equal(tokens[:, dup.second_half_slice(5)], tokens[:, 6:11])


def explicit_shared_qk_attention(attn, x):
    """Full softmax attention of an LSHSelfAttention's weights, written out: keys are the
    normalised queries, a position attends to itself only when nothing else is allowed (-1e5),
    later positions are masked (-1e9)."""
    B, L, _ = x.shape
    H, D = attn.n_heads, attn.d_head
    qk = attn.to_qk(x).view(B, L, H, D).transpose(1, 2)
    v = attn.to_v(x).view(B, L, H, D).transpose(1, 2)
    k = qk * torch.rsqrt(qk.pow(2).mean(-1, keepdim=True) + 1e-6) / math.sqrt(D)
    s = qk @ k.transpose(-1, -2)
    i = torch.arange(L)
    s = torch.where(i[:, None] == i[None, :], torch.full_like(s, -1e5), s)
    s = torch.where(i[None, :] > i[:, None], torch.full_like(s, -1e9), s)
    out = torch.softmax(s, -1) @ v
    return attn.to_out(out.transpose(1, 2).reshape(B, L, H * D))


def test_full_attention_setting_is_exact_attention():
    dup = load_example("duplication")
    args = dup.parse_args(["--word-len", "23", "--d-model", "32", "--heads", "2"])
    L = 2 * (args.word_len + 1)
    model = dup.build_model(args, n_hashes=1, bucket_size=dup.full_attention_bucket_size(args))
    model.eval()
    attn = next(m for m in model.modules() if isinstance(m, rx.nn.LSHSelfAttention))
    x = torch.randn(3, L, 32, dtype=torch.float64)
    attn.double()
    torch.testing.assert_close(attn(x), explicit_shared_qk_attention(attn, x), rtol=1e-9, atol=1e-9)


def test_duplication_runs_and_prints_the_table(capsys):
    dup = load_example("duplication")
    argv = ["--word-len", "7", "--vocab", "8", "--d-model", "16", "--heads", "2", "--d-ff", "32",
            "--bucket-size", "4", "--steps", "3", "--batch", "4", "--eval-batches", "1",
            "--no-progress", "--threads", "1"]
    assert dup.main(argv) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| training"))
    assert [c.strip() for c in header.strip("|").split("|")][1:] == [
        "eval full", "eval LSH-1", "eval LSH-2", "eval LSH-4", "eval LSH-8"]
    row = next(line for line in out.splitlines() if line.startswith("| LSH-4"))
    accuracies = [float(v) for v in re.findall(r"([\d.]+)%", row)]
    assert len(accuracies) == 5 and all(0 <= a <= 100 for a in accuracies)


# --------------------------------------------------------------------------------------------
# character-level LM

TINY_LM = ["--seq-len", "32", "--d-model", "16", "--depth", "1", "--heads", "2", "--bucket-size", "8",
           "--n-hashes", "1", "--batch", "2", "--eval-every", "2", "--save-every", "2",
           "--no-progress", "--threads", "1"]


def test_char_lm_trains_resumes_exactly_and_samples(tmp_path, capsys):
    lm = load_example("train_char_lm")
    straight, resumed = str(tmp_path / "straight.pt"), str(tmp_path / "resumed.pt")
    assert lm.main(TINY_LM + ["--steps", "4", "--checkpoint", straight, "--sample-len", "0"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"step 4: train bpc [\d.]+, validation bpc [\d.]+", out)

    assert lm.main(TINY_LM + ["--steps", "2", "--checkpoint", resumed, "--sample-len", "0"]) == 0
    assert lm.main(TINY_LM + ["--steps", "4", "--checkpoint", resumed, "--resume",
                              "--sample-len", "0"]) == 0
    assert "resumed from" in capsys.readouterr().out
    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    assert a["step"] == b["step"] == 4
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=0, atol=0, msg=name)

    assert lm.main(["--sample-only", "--checkpoint", straight, "--prompt", "The ",
                    "--sample-len", "25", "--threads", "1"]) == 0
    sample = capsys.readouterr().out[:-1]  # print added one newline; the sample may hold more
    assert sample.startswith("The ") and len(sample) == 4 + 25
    assert set(sample) <= set(a["alphabet"])


def test_char_lm_rejects_unknown_prompt_characters(tmp_path):
    lm = load_example("train_char_lm")
    ckpt = str(tmp_path / "m.pt")
    assert lm.main(TINY_LM + ["--steps", "1", "--checkpoint", ckpt, "--sample-len", "0"]) == 0
    with pytest.raises(ValueError, match="alphabet"):
        lm.main(["--sample-only", "--checkpoint", ckpt, "--prompt", "\u2603"])


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (os.system, ("echo this should never run",))


def test_char_lm_checkpoints_load_weights_only(tmp_path):
    """A checkpoint is read with weights_only=True: one that carries an object whose unpickling
    would run code is refused instead of executed."""
    lm = load_example("train_char_lm")
    path = str(tmp_path / "sent_to_me.pt")
    torch.save({"config": {}, "payload": _RunsCodeWhenUnpickled()}, path)
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        lm.load_checkpoint(path, torch.device("cpu"))


def test_char_lm_under_torchrun_shards_and_checkpoints_with_dcp(tmp_path, capsys):
    """The distributed mode: torchrun --nproc_per_node 2 on the CPU (gloo, FSDP2 per layer), a
    DCP checkpoint directory that one process can sample from."""
    import shutil
    import subprocess
    import sys
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not found")
    ckpt = str(tmp_path / "lm.dcp")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(EXAMPLES)] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--standalone", os.path.join(EXAMPLES, "train_char_lm.py"), *TINY_LM,
         "--device", "cpu", "--steps", "2", "--checkpoint", ckpt, "--sample-len", "0"],
        env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "FSDP2 per layer over 2 processes" in run.stdout
    assert re.search(r"step 2: train bpc [\d.]+, validation bpc [\d.]+", run.stdout)
    assert os.path.isdir(ckpt)
    lm = load_example("train_char_lm")
    assert lm.main(["--sample-only", "--checkpoint", ckpt, "--prompt", "The ",
                    "--sample-len", "10", "--threads", "1", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("The ")


# --------------------------------------------------------------------------------------------
# hf_reformer


def test_hf_reformer_byte_encoding_round_trips():
    hf_reformer = load_example("hf_reformer")
    text = "Reformer – bytes + 2"
    ids = hf_reformer.encode_bytes(text)
    assert ids.shape == (1, len(text.encode("utf-8")))
    assert int(ids.min()) >= 2
    assert hf_reformer.decode_bytes(ids[0]) == text


def test_hf_reformer_converts_and_compares(capsys):
    pytest.importorskip("transformers")
    hf_reformer = load_example("hf_reformer")
    hf_reformer.main(["--lengths", "256", "--repeats", "1", "--threads", "1"])
    out = capsys.readouterr().out
    difference = float(re.search(r"relative difference ([\d.e+-]+)", out).group(1))
    assert difference < 1e-5
    rows = [line for line in out.splitlines() if line.startswith("| 256 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["forward", "training step"]


@pytest.mark.parametrize("step", ["forward", "training step"])
def test_hf_reformer_counts_the_dense_products(step):
    """dense_flops_per_token (the arithmetic behind the example's speed-up bound) equals the
    matrix products (aten mm and addmm: the linear layers; attention and hashing use bmm) that
    HF's own model runs in that step, its reversible backward's recompute included."""
    transformers = pytest.importorskip("transformers")
    from torch.utils._python_dispatch import TorchDispatchMode

    class MatrixProductFlops(TorchDispatchMode):
        flops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
                a, b = args[-2], args[-1]
                self.flops += 2 * a.shape[0] * a.shape[1] * b.shape[1]
            return func(*args, **(kwargs or {}))

    hf_reformer = load_example("hf_reformer")
    length = 256
    config = hf_reformer.crime_and_punishment_config(length)
    model = transformers.ReformerModelWithLMHead(config).train(step != "forward")
    tokens = torch.randint(2, config.vocab_size, (1, length))
    with MatrixProductFlops() as counter:
        logits = model(input_ids=tokens).logits
        if step != "forward":
            logits.sum().backward()
    assert counter.flops == hf_reformer.dense_flops_per_token(config, step) * length
