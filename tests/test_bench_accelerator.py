"""bench/accelerator.py on a CPU host: says so, checks the kernels in interpret mode, exits 0, imports no TF stack."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_accelerator_check_on_cpu():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "accelerator.py"), "--quick"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no accelerator" in proc.stderr
    report = json.loads(proc.stdout)
    assert report["backend"] == "cpu" and report["auto_dispatch"] == "capacity"
    assert report["forbidden_modules_loaded"] == []  # no tensorflow, seqio, ml_collections
    (check,) = report["correctness"]
    assert check["ok"] and check["interpret"] and set(check["rel_err"]) == {
        "gmm", "gmm_fused_rows", "tgmm", "pallas_moe_vs_dropless"}
    assert "timings" not in report and "train_step" not in report
