#!/usr/bin/env python
"""Rebuild the self-contained report.html of a report folder from the outputs already in it.

examples:
  python jobs/report.py                                    # <root>/pipeline/report/report.html
  python jobs/report.py --report report                    # the folder jobs/analyze.py wrote
  python jobs/report.py --report s3://my-bucket/gsm/pipeline/report --title "gemma-3-1b, seed 1234"

Reads the Markdown tables (table1_*, table2_*, table3_*, coverage, verifier, data_scaling), the PNG
plots and the *_manifest.json files that jobs/pipeline.py, analyze.py, coverage.py, verifier.py and
data_scaling.py wrote into the folder, and writes report.html beside them: tables, plots (embedded),
config, versions and timings, nothing loaded from outside the file. Nothing is recomputed.
Relative paths are under the storage root (--storage-root, $RAY_APP_STORAGE_ROOT or ~/ray-app-gsm).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_app import cli, storage  # noqa: E402
from ray_app.analysis.html_report import MANIFESTS, write_html_report  # noqa: E402
from ray_app.utils.io import DataError  # noqa: E402


def main(argv=None) -> int:
    parser = cli.file_job_parser(__doc__)
    parser.add_argument("--report", default="pipeline/report", help="report folder to rebuild report.html in [default: %(default)s]")
    parser.add_argument("--title", default=None, help="page title [default: the existing report.html's, else 'GSM study: SFT and inference-time scaling']")
    return cli.run_file_job(parser, argv, _main)


def _main(args) -> int:
    folder = storage.under_root(args.storage_root, args.report)
    files = storage.list_files(folder) if storage.is_dir(folder) else []
    names = {storage.basename(f) for f in files}
    if not names & ({n for n in MANIFESTS} | {"table1_accuracy.md", "table2_scaling.md"}):
        raise DataError(f"{folder}: no report outputs there (no table1_accuracy.md, table2_scaling.md or *_manifest.json); "
                        "run jobs/pipeline.py or jobs/analyze.py first, or pass --report with the folder they wrote")
    # Only a report its job published completely (report.html aside: it is what this job replaces).
    reason = storage.incomplete_reason(folder, ignore=("report.html",))
    if reason:
        raise DataError(f"{folder} is not a complete report: {reason}. Rerun the job that wrote it "
                        "(jobs/pipeline.py, analyze.py, coverage.py, verifier.py or data_scaling.py)")
    title = args.title or _existing_title(storage.join(folder, "report.html")) or "GSM study: SFT and inference-time scaling"
    with tempfile.TemporaryDirectory(prefix="ray_app_report_") as tmp:
        # The published files, the page rebuilt beside them, published again (other entries stay).
        for rel in storage.read_marker(folder)["files"]:
            if rel != "report.html":
                Path(tmp, rel).parent.mkdir(parents=True, exist_ok=True)
                Path(tmp, rel).write_bytes(storage.read_bytes(storage.join(folder, rel)))
        write_html_report(tmp, title)
        storage.publish_dir(tmp, folder, args.storage_root)
    print(f"[report] done: {storage.join(folder, 'report.html')}")
    return 0


def _existing_title(path: str) -> str | None:
    import html
    import re

    if not storage.is_file(path):
        return None
    match = re.search(r"<title>(.*?)</title>", storage.read_text(path), re.DOTALL)
    return html.unescape(match.group(1)) if match else None


if __name__ == "__main__":
    sys.exit(main())
