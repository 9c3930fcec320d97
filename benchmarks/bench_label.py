"""Throughput and latency of `tinyrlhf label` under many labellers: the real CLI server in its own process,
N client threads (one per labeller) each fetching and submitting M labels over HTTP as fast as they can.

    python benchmarks/bench_label.py --labellers 20 --submits 50

Prints labels/s and the submit latency (median, p99). Every submit commits and syncs SQLite's WAL before
it is answered (synchronous=FULL), so the disk's fsync time is in these numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--labellers", type=int, default=20)
    ap.add_argument("--submits", type=int, default=50)
    ap.add_argument("--dir", default="", help="where the database goes (default: a temp dir)")
    args = ap.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="bench-label-")
    os.makedirs(root, exist_ok=True)
    n = args.labellers * args.submits
    outputs = os.path.join(root, "outputs.jsonl")
    with open(outputs, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"prompt {i}", "outputs": [{"model": "a", "text": f" a{i}"},
                                                                     {"model": "b", "text": f" b{i}"}]}) + "\n")
    db = os.path.join(root, "fb.db")
    names = [f"l{i}" for i in range(args.labellers)]
    proc = subprocess.Popen([sys.executable, "-m", "tinyrlhf", "label", db, "--outputs", outputs, "--labellers",
                             ",".join(names), "--port", "0", "--double-share", "0"], stdout=subprocess.PIPE, text=True)
    links = {}
    for line in proc.stdout:
        m = re.search(r"^\s+(l\d+)\s+(http://\S+)/\?token=(\S+)", line)
        if m:
            links[m.group(1)] = (m.group(2), m.group(3))
        if line.startswith("export:"):
            break
    url = links[names[0]][0]
    while True:
        try:
            httpx.get(url + "/health", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    lat: list[float] = []
    lock = threading.Lock()

    def person(name):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {links[name][1]}"}, timeout=60) as c:
            for k in range(args.submits):
                item = c.get("/api/next").json()["item"]
                t = time.perf_counter()
                r = c.post("/api/submit", json={"item_id": item["item_id"], "submit_id": f"{name}-{k:06d}",
                                                "choice": "A"})
                r.raise_for_status()
                with lock:
                    lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=person, args=(nm,)) for nm in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    proc.terminate()
    proc.wait()
    lat.sort()
    print(f"{len(lat)} labels from {args.labellers} labellers in {wall:.1f} s: {len(lat) / wall:.0f} labels/s "
          f"(each with a fetch of the next item); submit latency median {statistics.median(lat) * 1000:.1f} ms, "
          f"p99 {lat[int(0.99 * (len(lat) - 1))] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
