"""benchmarks/compare_summaries.py pairs two benchmark summaries by seed (hand-computed interval)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "compare_summaries.py"


def _summary(path: Path, seeds: list[int], corda: list[float], dacs: list[float]) -> Path:
    methods = {"corda": {"title": "CorDA", "per_seed": corda}, "dacs": {"title": "DACS", "per_seed": dacs}}
    path.write_text(json.dumps({"seeds": seeds, "methods": methods}))
    return path


def test_paired_differences_over_the_shared_seeds(tmp_path):
    a = _summary(tmp_path / "a.json", [0, 1, 2], [10.0, 11.0, 12.0], [9.0, 9.0, 9.0])
    # B has the seeds in another order plus one A lacks; only 0, 1, 2 are paired
    b = _summary(tmp_path / "b.json", [2, 0, 1, 7], [13.0, 11.0, 11.5, 50.0], [9.0, 9.0, 9.0, 0.0])
    out = subprocess.run([sys.executable, str(SCRIPT), str(a), str(b), "--names", "ref", "paper"],
                         capture_output=True, text=True, check=True).stdout
    # CorDA differences paper - ref per seed: +1.0, +0.5, +1.0 -> mean 0.8333; sd 0.288675;
    # t(0.975, 2) = 4.302653 -> half-width 4.302653 * 0.288675 / sqrt(3) = 0.717109
    corda = next(line for line in out.splitlines() if line.startswith("CorDA"))
    assert "+0.83 +- 0.72 (excludes 0)" in corda
    dacs = next(line for line in out.splitlines() if line.startswith("DACS"))
    assert "+0.00" in dacs and "includes 0" in dacs
    assert "3 seeds [0, 1, 2]" in out
