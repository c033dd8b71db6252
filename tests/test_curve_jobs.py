"""README's curve commands as typed: coverage to N with its fit, the verifier, data scaling with a
fit, and report.html rebuilt, all on the tiny models (the fits themselves are checked on synthetic
data with known parameters in test_curves.py)."""

import json
import os
import shutil
import subprocess

import pytest

from browser import render
from conftest import ROOT
from test_job_submit import readme_block

pytestmark = pytest.mark.slow


def test_readme_curve_commands_as_typed(full_data, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(full_data, root / "data")  # what `python jobs/prepare_data.py` leaves in the root
    env = {**os.environ, "RAY_APP_STORAGE_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    commands = readme_block("curves-quick")
    assert commands.startswith("python jobs/coverage.py") and "python jobs/data_scaling.py" in commands
    proc = subprocess.run(["bash", "-c", "set -euo pipefail\n" + commands], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-10000:]

    coverage = root / "coverage"
    with (coverage / "coverage.csv").open() as f:
        curve = [line.split(",") for line in f.read().splitlines()[1:]]
    assert [int(row[2]) for row in curve] == list(range(1, 17))  # every k up to N = 16
    values = [float(row[3]) for row in curve]
    assert values == sorted(values) and 0 <= values[0] <= values[-1] <= 1  # coverage never falls with k
    fits = json.loads((coverage / "coverage_fit.json").read_text())
    assert list(fits) == ["base-small/gsm_symbolic_test"]
    fit = fits["base-small/gsm_symbolic_test"]
    assert ("a" in fit and "b" in fit) or "nothing to fit" in fit["error"] or "usable" in fit["error"]
    verifier = (coverage / "verifier.csv").read_text().splitlines()
    assert verifier[0].startswith("model,dataset,auc,auc_ci_low,auc_ci_high") and len(verifier) == 2
    assert (coverage / "verifier" / "verifier.md").read_text().splitlines()[2] == (coverage / "verifier.md").read_text().splitlines()[2]

    # report.html of the coverage folder, as a reader gets it.
    page = render(coverage / "report.html")
    assert page["requests"] == [] and "What a tiny-model run can and cannot show." in page["text"]
    assert {"Coverage and selection to large N", "The reward model as a verifier"} <= set(page["headings"])
    assert [i["alt"] for i in page["images"]] == ["coverage", "verifier"] and all(i["ok"] for i in page["images"])

    scaling = root / "data_scaling"
    table = (scaling / "data_scaling.csv").read_text().splitlines()
    assert table[0].startswith("train_rows,model,optimizer_steps,accuracy")
    assert [row.split(",")[0] for row in table[1:]] == ["0", "32", "96"]
    assert [row.split(",")[2] for row in table[1:]] == ["0", "6", "6"]
    # The subsets are nested: every row of the small set is in the big one.
    small = set((scaling / "train" / "train_32.jsonl").read_text().splitlines())
    assert len(small) == 32 and small <= set((scaling / "train" / "train_96.jsonl").read_text().splitlines())
    scaling_fits = json.loads((scaling / "data_scaling_fit.json").read_text())
    assert set(scaling_fits) == {"accuracy", "format"}
    for fit in scaling_fits.values():
        assert {"c", "alpha", "r2"} <= set(fit) or "error" in fit
    for png in ("data_scaling.png", "data_scaling_format.png"):
        assert (scaling / png).stat().st_size > 5_000
    assert "[report] done:" in out
