"""`make gpu-check` keeps working: its smoke mode runs on CPU here, from the source tree, in seconds.

The GPU machines it is meant for have no vLLM and no pyzmq: the script must not import them.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from tests.e2e import REPO

RUN = """
import json, sys
from benchmarks.gpu_check import main
main(["--device", "cpu", "--smoke", "--out", sys.argv[1]])
print(json.dumps({m: m in sys.modules for m in ("vllm", "zmq")}))
"""


def test_gpu_check_smoke_on_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", RUN, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"vllm": False, "zmq": False}
    r = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "errors" not in r and r["environment"]["device"] == "cpu"
    assert r["matmul_peak"]["tflops"] > 0
    lr = r["learner"]
    assert lr["tokens_per_s"] > 0 and 0 < lr["mfu"] and math.isfinite(lr["loss"]) and math.isfinite(lr["grad_norm"])
    assert r["packed_vs_padded_max_abs"] < 0.05  # same samples, same log-probs, packed or padded
    sp = r["sync_packing"]
    assert sp["packed_exact"] and sp["bytes"] > 0 and sp["group_backend"] == "gloo"
    assert "| learner tokens/s |" in (tmp_path / "gpu_check.md").read_text()
