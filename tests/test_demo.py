"""The demo (``python -m reformer_ext``, reformer_ext/demo.py) with tiny sizes: it runs, prints
its three tables with a number in every cell, writes a PNG, and the measurements show what the
demo is about (chunked feed-forward below the plain one, reversible activations flat in depth).
Run in a subprocess, as a user would. The memory accounting itself is tested in
tests/test_profiling.py."""

import os
import re
import subprocess
import sys

import pytest

TINY = ["--tokens", "512", "--lengths", "128,256,512", "--heads", "2", "--d-head", "16",
        "--bucket-size", "32", "--n-hashes", "2", "--depths", "1,4", "--stack-length", "512",
        "--d-model", "32", "--stack-heads", "2", "--ffn-length", "8192", "--ffn-chunks", "128",
        "--repeats", "1", "--no-progress", "--threads", "1", "--device", "cpu"]


def run_demo(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "reformer_ext", *args], capture_output=True,
                          text=True, timeout=timeout)


def table_rows(text, title_start):
    """The data rows (split into cells) of the table whose title starts with title_start."""
    block = text.split(title_start, 1)[1].split("\n\n", 1)[0].splitlines()
    # block[0]: rest of the title, [1]: header, [2]: rule, then rows, then the indented notes
    rows = []
    for line in block[3:]:
        if line.startswith(" "):
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def table_notes(text, title_start):
    block = text.split(title_start, 1)[1].split("\n\n", 1)[0]
    return " ".join(line.strip() for line in block.splitlines() if line.startswith(" "))


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory):
    png = tmp_path_factory.mktemp("demo") / "figure.png"
    proc = run_demo(*TINY, "--output", str(png))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, png


def test_writes_a_png(demo_output):
    _, png = demo_output
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 10_000  # four panels with data, not an empty canvas


def test_attention_table_has_every_length_and_variant(demo_output):
    out, _ = demo_output
    rows = table_rows(out, "(a) attention")
    assert [r[0] for r in rows] == ["128", "256", "512"]
    assert [r[1] for r in rows] == ["4", "2", "1"]  # batch × L held at --tokens
    for r in rows:
        assert len(r) == 2 + 2 * 3  # LSH, SDPA, explicit: time and memory each
        assert all(float(c) >= 0 for c in r[2:]), r


def test_depth_table_has_every_variant_and_depth(demo_output):
    out, _ = demo_output
    header = out.split("(b) training step", 1)[1].splitlines()[1]
    assert re.split(r"\s{2,}", header.strip()) == [
        "variant", "depth", "activations MiB", "param grads MiB", "peak MiB", "ms"]
    rows = table_rows(out, "(b) training step")
    assert [(r[0], r[1]) for r in rows] == [
        (v, d) for v in ("reversible", "plain (reversible=False)", "checkpoint per layer")
        for d in ("1", "4")]
    assert all(float(c) >= 0 for r in rows for c in r[2:]), rows


def test_depth_table_says_how_memory_is_measured(demo_output):
    out, _ = demo_output
    notes = table_notes(out, "(b) training step")
    assert "profiler's allocation events" in notes and "not the process' resident set" in notes
    assert "parameter gradients not counted" in notes
    assert re.search(r"depth 4 / depth 1: reversible [\d.]+x", notes), notes


def test_depth_table_gradients_are_the_same_for_every_variant(demo_output):
    out, _ = demo_output
    grads = {}
    for r in table_rows(out, "(b) training step"):
        grads.setdefault(r[1], set()).add(r[3])
    assert all(len(g) == 1 for g in grads.values()), grads  # same parameters in all three
    assert float(grads["4"].pop()) > float(grads["1"].pop())  # MiB to one decimal here


def test_depth_table_reversible_activations_stay_flat(demo_output):
    out, _ = demo_output
    act = {(r[0], r[1]): float(r[2]) for r in table_rows(out, "(b) training step")}
    # a behaviour check at tiny sizes (tests/test_profiling.py has the exact one): plain
    # stores every layer's activations, reversible only per-layer random state
    assert act["reversible", "4"] < 1.2 * act["reversible", "1"], act
    assert act["plain (reversible=False)", "4"] > 2 * act["plain (reversible=False)", "1"], act


def test_chunked_feed_forward_uses_less_memory_than_plain(demo_output):
    out, _ = demo_output
    rows = {r[0]: r for r in table_rows(out, "(c) feed-forward")}
    plain, chunked = float(rows["plain"][1]), float(rows["chunked (128)"][1])
    # plain keeps two (8192, 128) fp32 hidden tensors (8 MiB); chunks of 128 keep ~64 KiB
    assert plain > 4 and chunked < plain / 2, (plain, chunked)


@pytest.mark.parametrize("argv, message", [
    (["--tokens", "1000", "--lengths", "300"], "do not divide --tokens"),
    (["--depths", "0"], "positive"),
    (["--d-model", "30", "--stack-heads", "4"], "not divisible"),
])
def test_bad_options_are_rejected_with_a_message(argv, message, capsys):
    from reformer_ext.demo import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
