"""Helpers shared by several test files (fixtures are in conftest.py).

Sections: resource hygiene (memory over many calls, concurrent Python threads).
"""

import gc
import os
import threading

import torch


# --------------------------------------------------------------------------- resource hygiene


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def assert_memory_flat_over_1000_calls(step) -> None:
    """Calls ``step()`` 1,000 times on one thread (short on a 2-core CI machine); the resident
    memory after call 1,000 must be within 4 MiB of that after call 100. ``step`` must drop its
    results (a leak of one small tensor per call then shows as several MiB)."""
    n_threads = torch.get_num_threads()
    rss = {}
    try:
        torch.set_num_threads(1)
        for it in range(1, 1001):
            step()
            if it in (100, 1000):
                gc.collect()
                rss[it] = _rss_bytes()
    finally:
        torch.set_num_threads(n_threads)
    growth = rss[1000] - rss[100]
    assert growth < 4 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB"


def run_in_threads(calls, repeats: int = 3) -> list:
    """Makes each call (a function without arguments) ``repeats`` times from its own Python
    thread, all threads released at once; returns results[k][rep]. Fails if a thread raises or
    hangs."""
    results = [[None] * repeats for _ in calls]
    errors = []
    barrier = threading.Barrier(len(calls))

    def worker(k):
        try:
            barrier.wait()
            for rep in range(repeats):
                results[k][rep] = calls[k]()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((k, e))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker thread hangs"
    assert not errors, errors
    return results
