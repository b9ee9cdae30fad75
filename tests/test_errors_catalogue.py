"""The bad-input catalogues as a whole: every public entry point of reformer_ext and
reformer_ext.nn has one, and every argument of each has at least one bad-input case. The
catalogues themselves are in tests/test_lsh_attention_errors.py, tests/test_chunked_ffn_errors.py,
tests/test_local_attention_errors.py (with rx.nn.LocalSelfAttention) and tests/test_nn_errors.py
(their machinery in tests/_helpers.py).

`python tests/test_errors_catalogue.py --markdown PATH` writes every bad input tried and what it
got.
"""

import re

import reformer_ext as rx
import reformer_ext.nn as rnn

import test_chunked_ffn_errors
import test_local_attention_errors
import test_lsh_attention_errors
import test_nn_errors
from _helpers import Catalogue

CATALOGUES = {module.__name__: module.CATALOGUE for module in (
    test_lsh_attention_errors, test_chunked_ffn_errors, test_local_attention_errors,
    test_nn_errors)}


def test_catalogue_is_exhaustive():
    """Every argument of every entry point has at least one bad-input case, and every public
    module has constructor and forward cases."""
    args = {}
    for catalogue in CATALOGUES.values():
        args.update(catalogue.args)
    # Every public name of reformer_ext and reformer_ext.nn is catalogued or listed here.
    not_catalogued = {
        "ReversibleBlock",  # the pair (f, g) inside ReversibleSequence: no checks of its own
        # landed while this catalogue was extended (drop-in for nn.MultiheadAttention): TODO
        "SequenceFirstLSHAttention", "replace_attention",
        # need an initialised process group: their refused inputs are tested in
        # tests/test_distributed.py
        "shard_reformer", "set_dropout_sample_offset", "save_sharded_checkpoint",
        "load_sharded_checkpoint",
    }
    # What the build holds: no tensor arguments; require_device's errors are in test_build.py.
    build_queries = {"default_device", "has_cuda_kernels", "require_device"}
    public_fns = {n for n in rx.__all__ if n not in ("nn", "ops")} - build_queries  # namespaces
    assert public_fns <= {e.split(".", 1)[1] for e in args if e.startswith("rx.")}, \
        "a public function has no catalogue entry"
    missing_modules = (set(rnn.__all__) - set(test_nn_errors.MODULES)
                       - set(test_local_attention_errors.MODULES) - not_catalogued)
    assert not missing_modules, f"public modules without a catalogue entry: {missing_modules}"
    covered = {e: set() for e in args}
    base_of = {e: f for catalogue in CATALOGUES.values() for e, f in catalogue.base_of.items()}
    bases = {f: f() for f in set(base_of.values())}
    for catalogue in CATALOGUES.values():
        for case in catalogue.cases + catalogue.dangerous:
            for entry in case.entries:
                if entry in covered:
                    covered[entry] |= set(case.make(bases[base_of[entry]]))
    # The LM passes these on to the Reformer (tested there and through the LM's own cases).
    covered["ReformerLM()"] |= {"bucket_size", "n_hashes"}
    missing = {e: sorted(args[e] - covered[e]) for e in args if args[e] - covered[e]}
    assert not missing, f"arguments without a bad-input case: {missing}"


# ------------------------------------------------------------------------ the bad-input note


def _split(result: str):
    """'clear: ValueError: msg' -> ('clear', 'ValueError', 'msg'); crash/no-error lines keep
    their text as the message."""
    kind, _, rest = result.partition(": ")
    if kind in ("clear", "unclear") and ": " in rest:
        exc, _, msg = rest.partition(": ")
        if re.fullmatch(r"[A-Za-z_][\w.]*", exc):
            return kind, exc, msg
    return kind, "-", rest


def _markdown(rows) -> str:
    def cell(text, limit=160):
        text = " ".join(str(text).split())
        text = text if len(text) <= limit else text[:limit - 1] + "…"
        return text.replace("|", "\\|")

    lines = ["| entry point | bad input | argument(s) | outcome | exception | message (excerpt) "
             "| status |", "|---|---|---|---|---|---|---|"]
    for catalogue, entry, case, result, child in rows:
        kind, exc, msg = _split(result)
        arg = ", ".join(sorted(case.make(catalogue.base_of[entry]())))
        status = (f"KNOWN BUG (xfail): {case.bugs[entry]}" if entry in case.bugs
                  else "ok" if (kind == "clear" or (case.expect == "no_crash"
                                                    and kind not in ("crash", "unclear")))
                  else "FAILS")
        where = " (child process)" if child else ""
        lines.append(f"| {cell(entry)} | {cell(case.name + where)} | {cell(arg)} | {kind} | "
                     f"{exc} | {cell(msg)} | {cell(status, 400)} |")
    return "\n".join(lines)


def main(argv=None):  # pragma: no cover - writes the bad-input note
    """python tests/test_errors_catalogue.py [--markdown PATH]: every bad input and what it
    got."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--markdown", help="write the Markdown table here (default: stdout)")
    opts = parser.parse_args(argv)
    # first: the children must fork before any operator ran here
    children = {name: Catalogue.run_children(name, catalogue.child_keys())
                for name, catalogue in CATALOGUES.items()}
    rows = []
    for name, catalogue in CATALOGUES.items():
        rows += [(catalogue, e, c, catalogue.outcome(e, c), False)
                 for c in catalogue.cases for e in c.entries]
        dangerous = {c.name: c for c in catalogue.dangerous}
        for key, res in children[name].items():
            entry, case_name = key.split("|", 1)
            rows.append((catalogue, entry, dangerous[case_name], res, True))
    counts = {}
    for _, entry, case, result, _ in rows:
        bug = entry in case.bugs
        counts["known bug (xfail)" if bug else result.split(":")[0]] = counts.get(
            "known bug (xfail)" if bug else result.split(":")[0], 0) + 1
    text = "\n".join([
        "# Bad inputs tried and what they got",
        "",
        "Generated by `python tests/test_errors_catalogue.py --markdown <this file>` from the "
        "catalogues of " + ", ".join(f"tests/{name}.py" for name in CATALOGUES) + " (their cases "
        "run in-process, the dangerous ones each in a forked child process).",
        "outcome: clear = ValueError/TypeError/RuntimeError whose message names the argument; "
        "unclear = another exception type, or a message not naming it; no error = returned "
        "normally; crash = the process died. status: ok, or the known bug the case is marked "
        "xfail(strict=True) for, or FAILS (an unmarked failure).",
        "",
        "Totals: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + ".",
        "",
        _markdown(rows),
    ])
    if opts.markdown:
        with open(opts.markdown, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
