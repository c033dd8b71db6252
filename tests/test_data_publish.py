"""Data sets are published as a set: a build killed at any moment leaves the old set complete (or
none, never a mix), a set is complete only when every file matches its manifest's sha256, and the
manifest holds no timings, so the same build has the same manifest hash."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, make_bucket, run_job
from ray_app.data.gsm import SPLITS, TIMINGS_FILE, data_status, has_data, manifest_sha256

SMALL = ["--num-templates", "3", "--train-size", "30", "--no-use-ray", "--build-models", ""]


def _set(folder: Path) -> dict:
    return {name: (folder / name).read_bytes() for name in [f"{s}.jsonl" for s in SPLITS] + ["manifest.json"]}


def test_manifest_has_no_timings_and_two_builds_share_its_hash(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run_job("prepare_data.py", "--out-dir", str(a), *SMALL)
    run_job("prepare_data.py", "--out-dir", str(b), "--cache-dir", "", *SMALL)  # one cached, one cold
    assert _set(a) == _set(b) and manifest_sha256(str(a)) == manifest_sha256(str(b))
    manifest = json.loads((a / "manifest.json").read_text())
    assert "seconds" not in json.dumps(manifest) and json.loads((a / TIMINGS_FILE).read_text())["seconds"]["total"] > 0
    assert manifest["sources"]["generator"]["name"].endswith("rejection-v1")


def test_a_build_killed_at_any_moment_leaves_the_old_set_or_none(tmp_path):
    out = tmp_path / "data"
    run_job("prepare_data.py", "--out-dir", str(out), *SMALL)
    old = _set(out)
    # How long a whole rebuild takes here, then kills spread over it (the switch is at the very end).
    started = time.perf_counter()
    run_job("prepare_data.py", "--out-dir", str(tmp_path / "timing"), "--seed", "9", *SMALL)
    whole = time.perf_counter() - started
    outcomes = set()
    for fraction in (0.3, 0.6, 0.8, 0.9, 0.95, 0.98, 1.0):
        proc = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "prepare_data.py"), "--out-dir", str(out), "--seed", "9", *SMALL],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(whole * fraction)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if out.exists():
            complete, why = data_status(str(out))
            assert complete, f"killed at {fraction:.0%} of a build: {why}"
            now = _set(out)
            outcomes.add("old" if now == old else "new")
            if now != old:  # the new set got in whole: put the old one back for the next round
                run_job("prepare_data.py", "--out-dir", str(out), *SMALL)
        else:  # killed between the two renames: the old set is intact beside it
            aside = list(tmp_path.glob(".data.old-*"))
            assert len(aside) == 1 and _set(aside[0]) == old
            os.replace(aside[0], out)
            outcomes.add("none")
    print(f"\nkilled builds left: {sorted(outcomes)}")
    assert "old" in outcomes


def test_a_set_is_complete_only_when_every_file_matches_its_manifest(tmp_path, s3_server):
    from ray_app import storage

    out = tmp_path / "data"
    run_job("prepare_data.py", "--out-dir", str(out), *SMALL)
    assert has_data(str(out))
    (out / "gsm_symbolic_test.jsonl").write_text((out / "gsm_symbolic_test.jsonl").read_text()[:-40])  # a half-written file
    assert data_status(str(out)) == (False, "gsm_symbolic_test.jsonl does not match the manifest's sha256 (an interrupted build)")
    # The same on a bucket: an upload that replaced one split and died before its manifest is no set.
    root = make_bucket("publish-data")
    run_job("prepare_data.py", "--storage-root", root, "--out-dir", "data", *SMALL, timeout=900)
    assert has_data(f"{root}/data")
    storage.write_text(f"{root}/data/gsm_symbolic_train.jsonl", "{}\n")
    assert not has_data(f"{root}/data")
    # A job pointed at it rebuilds rather than reads it, and says why.
    from ray_app.config import DataConfig
    from ray_app.data.gsm import ensure_data

    said = []
    ensure_data(f"{root}/data", DataConfig(gsm8k_source="bundled", num_templates=3, train_size=30, use_ray=False), log=said.append)
    assert "gsm_symbolic_train.jsonl does not match the manifest's sha256" in said[0] and has_data(f"{root}/data")
