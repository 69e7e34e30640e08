"""``asyncrl bench peak``: the machine's dense matmul throughput, the figure every MFU divides by.

Square matmuls (``2 n^3`` FLOPs each) in each dtype a run may compute in (fp32 and bf16 on CPU,
bf16 on a GPU), on 1 thread and on every core (CPU), measured side by side in one run on an idle
machine; the figures are stored in the cache the learner reads (asyncrl/peak.py), so the MFU in
``metrics.jsonl`` divides by what was measured here. ``--sizes`` shows whether n is big enough
(the rate should stop rising).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from asyncrl.peak import device_name, key, measure, store
from benchmarks.common import table, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", default="", help="comma list (CPU); default: 1 and every core")
    ap.add_argument("--sizes", default="", help="comma list of n; default: asyncrl.peak.SIZES (stored in the cache)")
    ap.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    ap.add_argument("--smoke", action="store_true", help="0.2 s measurements")
    ap.add_argument("--no-store", action="store_true", help="do not write the figures to the peak cache")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cores = os.cpu_count() or 1
    threads = [int(t) for t in args.threads.split(",") if t] or sorted({1, cores})
    if device == "cuda":
        threads = [1]
    sizes = [int(n) for n in args.sizes.split(",") if n] or [None]
    seconds = 0.2 if args.smoke else args.seconds
    rows, cache = [], {}
    for dtype in args.dtypes.split(","):
        for t in threads:
            for n in sizes:
                flops = measure(dtype, t, device, seconds, n)
                rows.append({"dtype": dtype, "threads": t, "n": n or "default", "GFLOP/s": flops / 1e9})
                if n is None:
                    cache[key(device, dtype, t)] = flops
    by = {(r["dtype"], r["threads"]): r["GFLOP/s"] for r in rows if r["n"] == "default"}
    md = f"device: {device_name(device)}\n\n" + table(rows, ["dtype", "threads", "n", "GFLOP/s"])
    for t in threads:
        if ("bfloat16", t) in by and ("float32", t) in by:
            md += f"\n\nbf16 / fp32 on {t} thread(s): **{by[('bfloat16', t)] / by[('float32', t)]:.2f}x**"
    if len(threads) > 1 and threads[0] == 1:
        for dtype in args.dtypes.split(","):
            if (dtype, threads[-1]) in by:
                scale = by[(dtype, threads[-1])] / by[(dtype, 1)]
                md += f"\n\n{dtype}: {threads[-1]} threads / 1 thread = {scale:.2f}x"
    if cache and not args.no_store and not args.smoke:
        md += f"\n\nstored in {store(cache)} (the learner's MFU divides by these)"
    write_results(args.out, "peak", {"device": device_name(device), "rows": rows}, md)


if __name__ == "__main__":
    main()
