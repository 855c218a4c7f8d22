"""Timing and peak-memory helpers shared by the benchmarks (torch_speed, tf_speed, zoo_speed).

Times: medians over rounds, each round calling every runner once (:func:`time_interleaved`), so that the
drifting load of a shared machine hits a method and its baseline alike; the ratios are what counts.

Peak memory on the CPU (:func:`peak_rss_growth`): the growth of the resident set during one call, read from
Linux's VmHWM after resetting it to the current resident set (``/proc/self/clear_refs``). Before the reset,
``malloc_trim(0)`` hands the memory that earlier calls freed back to the system; without it glibc keeps freed
blocks of the heap resident, and a call that reuses them looks free. What stays allocated across calls
(weights, an engine's converted parameters) is in the baseline, not in the growth. On a GPU
(:func:`peak_cuda_growth`): ``torch.cuda.max_memory_allocated`` above what was allocated before the call.
TensorFlow (:func:`peak_tf_growth`): the peak of TF's allocator above what it held before the call.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import statistics
import time


def _nothing():
    pass


def time_interleaved(runs, repeat, sync=_nothing):
    """Median wall time of each of ``runs`` over ``repeat`` rounds (one call of each per round, after one
    warm-up call each): on a shared machine whose load drifts, every run sees the same drift. ``sync``
    waits for queued device work (``torch.cuda.synchronize``) before a clock is read."""
    for run in runs:
        run()
    sync()
    times = [[] for _ in runs]
    for _ in range(repeat):
        for run, ts in zip(runs, times):
            t0 = time.perf_counter()
            run()
            sync()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def time_it(run, repeat, sync=_nothing):
    """Median wall time of ``run`` over ``repeat`` calls after one warm-up call."""
    return time_interleaved([run], repeat, sync)[0]


def _status(key):
    """A field of /proc/self/status, in kB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def trim():
    """Collect garbage and hand the memory glibc keeps from freed blocks back to the system."""
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):   # not glibc: the growth may then be under-counted
        pass


#: environment for a process whose peak resident set is measured: glibc serves every allocation of 128 KiB or
#: more by its own mmap, handed back to the system when freed. Its default threshold grows (up to 32 MiB) each
#: time a large block is freed, after which large temporaries come from the heap, whose freed gaps stay resident
#: and are reused or not depending on the order of the allocations: the peak of one and the same pass then moves
#: by 30-50% from process to process. With the threshold fixed the resident set follows what is allocated, as
#: CUDA's ``max_memory_allocated`` does. glibc reads it at start-up; set in a process that only measures memory
#: (a page fault per block would move the times), for the baseline and the methods alike.
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def rss_mib():
    """The resident set now (MiB)."""
    return _status("VmRSS") / 1024


def peak_rss_growth(run):
    """Peak growth of the resident set during one call of ``run`` (MiB); Linux only (None elsewhere)."""
    try:
        trim()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")               # reset the peak resident set (VmHWM) to the current one
        base = _status("VmRSS")
    except OSError:
        return None
    run()
    return (_status("VmHWM") - base) / 1024


def peak_tf_growth(run, engine):
    """Peak growth of TensorFlow's allocated memory during one call of ``run`` (MiB), on the device of ``engine`` (a
    TF engine: :meth:`attribx_tf.engine.TensorFlowEngine.allocated_peak`, TF's own allocator statistics). TF keeps
    the blocks that a warm-up call freed in its pool, so the resident set hardly grows on later calls and says
    nothing about a call's peak."""
    gc.collect()
    peak = engine.allocated_peak(run)
    return None if peak is None else peak / 2**20


def peak_cuda_growth(run, sync):
    """Peak growth of torch's allocated CUDA memory during one call of ``run`` (MiB)."""
    import torch
    gc.collect()
    sync()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run()
    sync()
    return (torch.cuda.max_memory_allocated() - base) / 2**20
