#!/usr/bin/env python
"""The reward model as a verifier, from any samples file: how well its rewards separate right from
wrong samples (AUC with a bootstrap interval over questions), how often it ranks a wrong sample above
every right one, and the Best-of-N ceiling those false positives imply (Inference Scaling fLaws).

examples:
  python jobs/verifier.py                                  # <root>/samples/samples.parquet -> <root>/verifier
  python jobs/verifier.py --samples coverage/samples/samples.parquet --out coverage/verifier-again
  python jobs/verifier.py --storage-root s3://my-bucket/gsm --bootstrap-resamples 5000

Writes verifier.csv/.md/.png, verifier_manifest.json and report.html. jobs/coverage.py writes the
same beside its coverage curves. Relative paths are under the storage root (--storage-root,
$RAY_APP_STORAGE_ROOT or ~/ray-app-gsm).
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_app import cli, storage  # noqa: E402
from ray_app.utils.io import DataError  # noqa: E402


def main(argv=None) -> int:
    parser = cli.file_job_parser(__doc__)
    parser.add_argument("--samples", default="samples/samples.parquet", help="samples file (.parquet or .jsonl) from jobs/sample.py or coverage.py [default: %(default)s]")
    parser.add_argument("--out", default="verifier", help="folder for the table, plot and report.html [default: %(default)s]")
    parser.add_argument("--bootstrap-resamples", type=int, default=2000, help="bootstrap resamples of the questions [default: %(default)s]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap [default: %(default)s]")
    return cli.run_file_job(parser, argv, _main)


def _main(args) -> int:
    from ray_app.analysis.curves import describe_verifier, write_verifier_report
    from ray_app.analysis.html_report import write_html_report
    from ray_app.analysis.report import read_samples
    from ray_app.utils.run_info import redacted, versions

    started = time.perf_counter()
    cli.start(args)
    if args.bootstrap_resamples < 100:
        raise DataError("--bootstrap-resamples must be at least 100")
    samples, out = storage.under_root(args.storage_root, args.samples), storage.under_root(args.storage_root, args.out)
    df = read_samples(samples)
    # Assembled locally, then published (storage.publish_dir): readers never see half of it.
    with tempfile.TemporaryDirectory(prefix="ray_app_verifier_") as tmp:
        local = Path(tmp)
        result = write_verifier_report(df, local, args.bootstrap_resamples, args.seed)
        storage.write_json(str(local / "verifier_manifest.json"), redacted({
            "samples": samples, "samples_sha256": hashlib.sha256(storage.read_bytes(samples)).hexdigest(),
            "settings": {"bootstrap_resamples": args.bootstrap_resamples, "seed": args.seed},
            "verifier": {f"{m}/{d}": s for (m, d), s in result["stats"].items()},
            "timings_s": {"total": round(time.perf_counter() - started, 1)}, "versions": versions(),
        }))
        write_html_report(local, "The reward model as a verifier")
        storage.publish_dir(local, out, args.storage_root)
    for line in describe_verifier(result["stats"]):
        print(f"[verifier] {line}")
    print(f"[verifier] done: {storage.join(out, 'report.html')} (and verifier.csv/.md/.png, verifier_manifest.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
