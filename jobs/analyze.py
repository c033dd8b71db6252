#!/usr/bin/env python
"""Majority vote vs Best-of-N vs reward-weighted vote vs pass@n, and where each fails.

    python jobs/analyze.py --samples outputs/samples/samples.parquet --out outputs/report

Writes table2_scaling.csv/.md (rows model x strategy, columns n), table3_failures.csv/.md,
unique_answers_dist.png, accuracy_vs_n.png, failure_modes.txt and analysis_manifest.json.
Ties are broken deterministically: the answer (or sample) that appears first wins.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_app.analysis.report import read_samples, to_markdown, write_report  # noqa: E402
from ray_app.utils.io import DataError, atomic_write_json, sha256_file  # noqa: E402
from ray_app.utils.run_info import versions  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", required=True, help="samples file (.parquet or .jsonl) from jobs/sample.py")
    parser.add_argument("--out", required=True, help="folder for tables, plots and traces")
    parser.add_argument("--ns", default="1,2,4,8", help="sample counts n to evaluate each strategy at")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        ns = [int(n) for n in args.ns.split(",")]
        df = read_samples(args.samples)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = write_report(df, args.out, ns)
    atomic_write_json(Path(args.out) / "analysis_manifest.json", {
        "samples": str(args.samples), "samples_sha256": sha256_file(args.samples), "rows": len(df),
        "ns": ns, "files": result["paths"], "seconds": time.perf_counter() - started, "versions": versions(),
        "tie_break": "lowest sample_idx (first seen) wins",
    })
    print(to_markdown(result["failures"]))
    for name, path in result["paths"].items():
        print(f"[analyze] {name:26s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
