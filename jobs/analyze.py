#!/usr/bin/env python
"""Majority vote vs Best-of-N vs weighted Best-of-N vs softmax vote vs pass@n, and where each fails.

examples:
  python jobs/analyze.py                                  # <root>/samples/samples.parquet -> <root>/report
  python jobs/analyze.py --samples pipeline/samples/samples.parquet --out pipeline/report-again
  python jobs/analyze.py --ns 1,2,4,8 --softmax-temperature 0.5 --bootstrap-resamples 5000
  python jobs/analyze.py --storage-root s3://my-bucket/gsm

Accuracy at n is, for every strategy, the mean over all size-n subsets of a question's N samples
(pass@n is then the unbiased pass@k); intervals are a seeded bootstrap over questions, differences
(Best-of-N - majority, SFT - base) a paired one. The course's first-n numbers are in table2_first_n.

Writes table2_scaling.csv/.md (rows model x strategy, columns n), table2_first_n.csv/.md,
table2_differences.csv/.md, table3_failures.csv/.md, unique_answers_dist.png, accuracy_vs_n.png,
failure_modes.txt, analysis_manifest.json, and report.html: all of it in one self-contained file.
Relative paths are under the storage root (--storage-root, $RAY_APP_STORAGE_ROOT or ~/ray-app-gsm).
Ties: the answer whose first sample has the lowest sample_idx wins; Best-of-N: the lowest sample_idx.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_app import cli, storage  # noqa: E402
from ray_app.analysis.html_report import write_html_report  # noqa: E402
from ray_app.analysis.report import read_samples, to_markdown, write_report  # noqa: E402
from ray_app.models.registry import parse_model_specs  # noqa: E402
from ray_app.utils.fingerprint import fingerprint  # noqa: E402
from ray_app.utils.io import DataError  # noqa: E402
from ray_app.utils.run_info import redacted, versions  # noqa: E402


def main(argv=None) -> int:
    parser = cli.file_job_parser(__doc__)
    parser.add_argument("--samples", default="samples/samples.parquet", help="samples file (.parquet or .jsonl) from jobs/sample.py [default: %(default)s]")
    parser.add_argument("--out", default="report", help="folder for tables, plots and traces [default: %(default)s]")
    parser.add_argument("--ns", default="1,2,4,8", help="sample counts n to evaluate each strategy at [default: %(default)s]")
    parser.add_argument("--softmax-temperature", type=float, default=1.0, help="T of the softmax vote, exp(reward / T) per sample [default: %(default)s]")
    parser.add_argument("--bootstrap-resamples", type=int, default=2000, help="bootstrap resamples of the questions for every interval [default: %(default)s]")
    parser.add_argument("--max-subsets", type=int, default=4096, help="enumerate the size-n subsets up to this many, else draw this many [default: %(default)s]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of drawn subsets [default: %(default)s]")
    return cli.run_file_job(parser, argv, _main)


def _main(args) -> int:
    started = time.perf_counter()
    cli.start(args)
    samples, out = storage.under_root(args.storage_root, args.samples), storage.under_root(args.storage_root, args.out)
    try:
        ns = sorted({int(n) for n in args.ns.split(",") if n.strip()})
    except ValueError:
        raise DataError(f"--ns {args.ns!r}: expected comma-separated sample counts such as 1,2,4,8") from None
    if not ns or ns[0] < 1:
        raise DataError(f"--ns {args.ns!r}: sample counts must be at least 1")
    if args.bootstrap_resamples < 100 or args.max_subsets < 1:
        raise DataError("--bootstrap-resamples must be at least 100 and --max-subsets at least 1")
    df = read_samples(samples)
    samples_sha = hashlib.sha256(storage.read_bytes(samples)).hexdigest()
    # Assembled locally, then published (storage.publish_dir): readers never see half a report.
    with tempfile.TemporaryDirectory(prefix="ray_app_report_") as local_out:
        result = write_report(df, local_out, ns, args.softmax_temperature, args.bootstrap_resamples, args.seed, args.max_subsets)
        settings = {"samples_sha256": samples_sha, **result["settings"]}
        # The models behind the samples, from the sampling run's manifest beside them (when there is one).
        sample_manifest = storage.join(storage.parent(samples), "sample_manifest.json")
        sampled = storage.read_json(sample_manifest)["config"] if storage.is_file(sample_manifest) else {}
        models = dict(parse_model_specs(sampled["models"])) if sampled.get("models") else {}
        if sampled.get("reward_model"):
            models["reward model"] = sampled["reward_model"]
        storage.write_json(storage.join(local_out, "analysis_manifest.json"), redacted({
            "samples": samples, "samples_sha256": samples_sha, "rows": len(df), "settings": settings,
            "config_fingerprint": fingerprint(settings), "ns": ns, "models": models,
            "files": {name: storage.join(out, Path(path).name) for name, path in result["paths"].items()},
            "seconds": time.perf_counter() - started, "versions": versions(),
        }))
        result["paths"]["report.html"] = str(write_html_report(local_out, "Inference-time scaling: selection strategies vs samples per question", models))
        storage.publish_dir(local_out, out, args.storage_root)
    print(to_markdown(result["differences"]) if len(result["differences"]) else "")
    print(to_markdown(result["failures"]))
    for name, path in result["paths"].items():
        print(f"[analyze] {name:26s} {storage.join(out, Path(path).name)}")
    print(f"[analyze] done: tables and plots -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
