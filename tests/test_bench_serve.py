"""benchmarks/bench_serve.py --quick runs end to end: both servers as their own processes on loopback, the
load, a quantisation row and the gold comparison, with no failed request. (Only the fp32 row: int8 and bf16
add a server start each and run the same code; test_serve_engine starts an int8 server through the CLI.)"""
from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_serve_quick(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_serve.py"), "--quick", "--threads", "1",
           "--modes", "none", "--workdir", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^(baseline|ours|none|int8|bf16)\s+\d.*$", out, re.M)}
    assert set(rows) == {"baseline", "ours", "none"}, out
    assert "0/6" in rows["baseline"] and "0/6" in rows["ours"]  # 3 clients x 2 requests, no error
    assert re.search(r"ours / baseline: tokens/s [\d.]+x .* errors 0 \+ 0", out)
