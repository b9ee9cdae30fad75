"""The bad-input catalogues as a whole: every public entry point of reformer_ext and
reformer_ext.nn has one, and every argument of each has at least one bad-input case. The
catalogues themselves are in tests/test_lsh_attention_errors.py, tests/test_chunked_ffn_errors.py,
tests/test_local_attention_errors.py (with rx.nn.LocalSelfAttention), tests/test_nn_errors.py and
tests/test_drop_in_errors.py (rx.nn.SequenceFirstLSHAttention, rx.nn.replace_attention); their
machinery is in tests/_helpers.py.

Entry names: "rx.<f>" for a function of reformer_ext, "rx.nn.<f>" for a function of
reformer_ext.nn, "ops.<op>" for an operator, "<Module>()" and "<Module>.forward" for a module of
reformer_ext.nn (registered from a catalogue file's MODULES by test_nn_errors.add_modules).

`python tests/test_errors_catalogue.py --markdown PATH` writes every bad input tried and what it
got.
"""

import inspect
import re

import reformer_ext as rx
import reformer_ext.nn as rnn

import test_chunked_ffn_errors
import test_drop_in_errors
import test_local_attention_errors
import test_lsh_attention_errors
import test_nn_errors
from _helpers import Catalogue

CATALOGUE_FILES = (test_lsh_attention_errors, test_chunked_ffn_errors,
                   test_local_attention_errors, test_nn_errors, test_drop_in_errors)
CATALOGUES = {module.__name__: module.CATALOGUE for module in CATALOGUE_FILES}
# The reformer_ext.nn modules with constructor and forward entries.
MODULES = {name for module in CATALOGUE_FILES for name in getattr(module, "MODULES", {})}


def test_catalogue_is_exhaustive():
    """Every argument of every entry point has at least one bad-input case, every public
    function of reformer_ext and reformer_ext.nn has an entry, and every public module has
    constructor and forward cases."""
    args = {}
    for catalogue in CATALOGUES.values():
        args.update(catalogue.args)
    # Every public name of reformer_ext and reformer_ext.nn is catalogued or listed here.
    # What the build holds: no tensor arguments; require_device's errors are in test_build.py.
    build_queries = {"default_device", "has_cuda_kernels", "require_device"}
    public_fns = {n for n in rx.__all__ if n not in ("nn", "ops")} - build_queries  # namespaces
    rx_entries = {e[len("rx."):] for e in args if e.startswith("rx.")
                  and not e.startswith("rx.nn.")}
    assert public_fns <= rx_entries, \
        f"public functions without a catalogue entry: {public_fns - rx_entries}"

    nn_classes = {n for n in rnn.__all__ if inspect.isclass(getattr(rnn, n))}
    nn_fns = set(rnn.__all__) - nn_classes
    modules_not_catalogued = {
        "ReversibleBlock",  # the pair (f, g) inside ReversibleSequence: no checks of its own
    }
    fns_not_catalogued = {
        # need an initialised process group: their refused inputs are tested in
        # tests/test_distributed.py
        "shard_reformer", "set_dropout_sample_offset", "save_sharded_checkpoint",
        "load_sharded_checkpoint",
    }
    nn_entries = {e[len("rx.nn."):] for e in args if e.startswith("rx.nn.")}
    missing_fns = nn_fns - nn_entries - fns_not_catalogued
    assert not missing_fns, f"public reformer_ext.nn functions without an entry: {missing_fns}"
    missing_modules = nn_classes - MODULES - modules_not_catalogued
    assert not missing_modules, f"public modules without a catalogue entry: {missing_modules}"
    # The exemptions name public names that are really not catalogued (no stale entries).
    assert modules_not_catalogued <= nn_classes - MODULES, "stale module exemption"
    assert fns_not_catalogued <= nn_fns - nn_entries, "stale function exemption"
    assert nn_entries <= nn_fns, f"entries of unknown functions: {nn_entries - nn_fns}"
    assert MODULES <= nn_classes, f"MODULES not public classes: {MODULES - nn_classes}"
    assert all(f"{m}()" in args and f"{m}.forward" in args for m in MODULES)
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
