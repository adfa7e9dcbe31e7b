"""Compare two outputs of ``benchmarks/synthetic_shift.py`` method by method, paired by seed.

Each ``summary.json`` holds per-seed target val mIoU of every method. For every method present in
both, this prints the per-seed values of A and B, the mean paired difference B - A with its 95%
t-interval (:func:`cordaseg.demo.stats.paired_difference`) and whether the interval excludes 0.
Only seeds present in both files are used. Example (recipe fidelity, benchmarks/RESULTS.md):

    .venv/bin/python benchmarks/compare_summaries.py runs/parity_reference/summary.json \\
        runs/parity_paper/summary.json --names reference paper
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cordaseg.demo.stats import paired_difference


def load(path: Path) -> tuple[list[int], dict[str, dict]]:
    data = json.loads(path.read_text())
    return list(data["seeds"]), data["methods"]


def compare(a: Path, b: Path, names: tuple[str, str] = ("A", "B")) -> list[dict]:
    """Rows of (method, per-seed values of A and B, paired difference B - A), one per shared method."""
    seeds_a, methods_a = load(a)
    seeds_b, methods_b = load(b)
    seeds = [s for s in seeds_a if s in seeds_b]
    if len(seeds) < 2:
        raise SystemExit(f"{a} and {b} share fewer than 2 seeds ({seeds}): no interval can be computed")
    rows = []
    for method, entry in methods_a.items():
        if method not in methods_b:
            continue
        va = [entry["per_seed"][seeds_a.index(s)] for s in seeds]
        vb = [methods_b[method]["per_seed"][seeds_b.index(s)] for s in seeds]
        diff = paired_difference(vb, va)
        rows.append({"method": method, "title": entry.get("title", method), "seeds": seeds, names[0]: va,
                     names[1]: vb, "difference": diff})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="summary.json of the first setting")
    parser.add_argument("b", type=Path, help="summary.json of the second setting")
    parser.add_argument("--names", nargs=2, default=("A", "B"), help="names of the two settings")
    args = parser.parse_args(argv)
    a_name, b_name = args.names
    rows = compare(args.a, args.b, (a_name, b_name))
    seeds = rows[0]["seeds"] if rows else []
    print(f"{len(seeds)} seeds {seeds}; difference = {b_name} - {a_name}, mIoU, 95% t-interval")
    print(f"{'method':<15} {a_name + ' per seed':>24} {b_name + ' per seed':>24}   difference")
    for row in rows:
        d = row["difference"]
        excludes = "excludes 0" if d.excludes_zero else "includes 0"
        print(f"{row['title']:<15} {' '.join(f'{v:7.2f}' for v in row[a_name]):>24} "
              f"{' '.join(f'{v:7.2f}' for v in row[b_name]):>24}   {d.mean:+.2f} +- {d.half_width:.2f} ({excludes})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
