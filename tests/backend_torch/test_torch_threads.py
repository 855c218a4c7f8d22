"""First use from several threads: the plugin manager and registry are built once, under a lock.

Before, when 4 threads made the first attribx call together, 3 could fail ("no installed backend translates
...", an unknown engine) because they saw a plugin manager whose entry points were still being loaded; with
engine="torch" a process could lose the torch engine for its whole life. Each case runs in a fresh process,
since only the very first use is at stake.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")
pytest.importorskip("attribx_torch")

SCRIPT = textwrap.dedent('''
    import threading
    import numpy as np
    import torch
    import attribx

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).eval()
    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    n = 8
    barrier = threading.Barrier(n)
    results, errors = [None] * n, [None] * n

    def work(i):
        barrier.wait()
        try:
            results[i] = attribx.explain(model, x, method="lrp.epsilon", engine="torch").values
        except BaseException as err:
            errors[i] = f"{type(err).__name__}: {err}"

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bad = [e for e in errors if e]
    assert not bad, bad
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    print("OK")
''')


@pytest.mark.parametrize("attempt", range(3))
def test_first_explain_from_eight_threads_at_once(attempt):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
