"""Runs that never collide and never delete outside themselves, on local folders (S3: test_storage.py).

Bad names and paths stop a job at parse time with status 2 (before Ray, before anything is deleted);
deletes stay strictly inside the storage root; folders are published whole (a completion marker,
written last) and read only when complete; one run holds an output folder at a time; files get the
umask's permissions. Real files and real job processes, no Ray cluster: seconds each.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from ray_app import cli, storage
from ray_app.config import parse_job_config
from ray_app.models.registry import parse_model_specs, resolve_model_spec
from ray_app.utils.run_lock import RunLocked, run_lock


@pytest.fixture
def tree(tmp_path):
    """A storage root holding earlier outputs, a working directory and a file above the root: all must survive."""
    root = tmp_path / "root"
    for folder in ("samples", "sft/sft-tiny-gemma3-small"):
        (root / folder).mkdir(parents=True)
        (root / folder / "keep.txt").write_text("earlier output")
    work = tmp_path / "work"
    work.mkdir()
    (work / "sentinel.txt").write_text("the working directory")
    (tmp_path / "above.txt").write_text("above the root")
    return tmp_path, root, work


def _survived(tmp_path: Path) -> bool:
    return all((tmp_path / p).is_file() for p in ("above.txt", "work/sentinel.txt", "root/samples/keep.txt",
                                                  "root/sft/sft-tiny-gemma3-small/keep.txt"))


BAD_ARGS = [
    ("sample.py", ["--out-dir", ""], "--out-dir is empty: give a folder name"),
    ("sample.py", ["--out-dir", "../.."], "--out-dir '../..' is not a folder inside the storage root"),
    ("sample.py", ["--out-dir", "."], "--out-dir '.' is not a folder inside the storage root"),
    ("sample.py", ["--out-dir", "{tmp}"], "--fresh-run deletes {tmp}, which is not inside the storage root"),
    ("sample.py", ["--models", "a/b=tiny-gemma3-small"], "--models: model label 'a/b' in 'a/b=tiny-gemma3-small' is not a plain name"),
    ("sft.py", ["--run-name", "../.."], "--run-name '../..': a run name is one folder name (letters, digits"),
    ("sft.py", ["--run-name", ""], "--run-name '': a run name is one folder name"),
    ("sft.py", ["--storage-path", "sft/../.."], "--storage-path 'sft/../..' is not a folder inside the storage root"),
]


@pytest.mark.parametrize("script,args,message", BAD_ARGS, ids=[f"{s}{' '.join(a)}" for s, a, _ in BAD_ARGS])
def test_bad_names_and_paths_exit_2_at_parse_time_and_nothing_is_deleted(tree, script, args, message):
    tmp_path, root, work = tree
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / script), "--storage-root", str(root), *args, "--fresh-run"],
                          cwd=work, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message.replace("{tmp}", str(tmp_path)) in proc.stderr, proc.stderr
    assert "[storage]" not in proc.stdout and "[ray]" not in proc.stdout  # stopped before the root, let alone Ray
    assert time.perf_counter() - started < 60
    assert _survived(tmp_path)


@pytest.mark.parametrize("script,args,message", [
    ("analyze.py", ["--out", ""], "--out is empty"),
    ("verifier.py", ["--out", "../elsewhere"], "--out '../elsewhere' is not a folder inside the storage root"),
    ("report.py", ["--report", "."], "--report '.' is not a folder inside the storage root"),
])
def test_jobs_that_read_outputs_check_their_locations_too(tree, script, args, message):
    tmp_path, root, work = tree
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / script), "--storage-root", str(root), *args],
                          cwd=work, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert _survived(tmp_path) and sorted(p.name for p in tmp_path.iterdir()) == ["above.txt", "root", "work"]


def test_relative_paths_are_normalised_and_uris_may_not_climb_out_of_their_bucket(tmp_path, capsys):
    cfg, args = parse_job_config("sample", "x", ["--storage-root", str(tmp_path), "--out-dir", "a/../b/./c", "--fresh-run"])
    assert cfg.out_dir == str(tmp_path / "b" / "c") and args.storage_root == str(tmp_path)
    with pytest.raises(SystemExit) as e:
        parse_job_config("coverage", "x", ["--storage-root", str(tmp_path), "--data-dir", "s3://bucket/a/../../x"])
    assert e.value.code == 2 and "--data-dir 's3://bucket/a/../../x': 's3://bucket/a/../../x' climbs above its bucket" in capsys.readouterr().err
    # A label-less model is labelled with a plain name; a label is never a path.
    assert parse_model_specs("google/gemma-3-1b-it,s=sft/r1/final_model,sft/r2/final_model") == [
        ("gemma-3-1b-it", "google/gemma-3-1b-it"), ("s", "sft/r1/final_model"), ("r2", "sft/r2/final_model")]
    for bad in ("../x=tiny-gemma3-small", "a b=m", ".=m"):
        with pytest.raises(ValueError, match="is not a plain name"):
            parse_model_specs(bad)


def test_delete_stays_strictly_inside_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "run" / "sub").mkdir(parents=True)
    (root / "run" / "sub" / "f.txt").write_text("x")
    (tmp_path / "root2").mkdir()
    (tmp_path / "root2" / "keep.txt").write_text("a sibling whose name starts like the root's")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep.txt").write_text("outside")
    (root / "link").symlink_to(tmp_path / "outside")  # a symlink inside the root to a folder outside it
    refused = [str(root), f"{root}/", f"{root}/run/..", f"{root}/../outside", str(tmp_path / "root2" / "keep.txt"),
               str(tmp_path), "", "run", f"{root}/link/keep.txt", f"{root}/link/.."]
    for path in refused:
        with pytest.raises(storage.StorageError, match="refusing to delete"):
            storage.delete(path, str(root))
    with pytest.raises(storage.StorageError, match="refusing to delete"):
        storage.delete(str(root / "run"), "")
    assert (root / "run" / "sub" / "f.txt").is_file() and (tmp_path / "root2" / "keep.txt").is_file()
    storage.delete(str(root / "link"), str(root))  # the link goes, never what it points to
    assert not (root / "link").exists() and (tmp_path / "outside" / "keep.txt").is_file()
    storage.delete(f"{root}/run/sub/../sub", f"{root}/")
    assert not (root / "run" / "sub").exists() and (root / "run").is_dir()
    storage.delete(str(root / "run" / "never-there"), str(root))  # absent: nothing to do


def _folder(path: Path, files: dict) -> Path:
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    return path


def test_publish_dir_switches_the_folder_whole_and_keeps_other_writers_entries(tmp_path):
    import hashlib

    root = tmp_path / "root"
    dest = root / "coverage"
    v1 = _folder(tmp_path / "v1", {"coverage.md": b"v1", "plots/a.png": b"\x89PNG" * 100, "old.csv": b"1,2"})
    marker = storage.publish_dir(v1, str(dest), str(root))
    assert marker["files"]["coverage.md"] == {"size": 2, "sha256": hashlib.sha256(b"v1").hexdigest()} and marker["written_at"]
    assert json.loads((dest / "_COMPLETE.json").read_text())["files"] == marker["files"] and storage.is_complete(str(dest))
    # Another step writes into the same folder (coverage/samples/, a verifier folder): the next publish keeps it.
    _folder(dest, {"samples/samples.jsonl": b"{}\n", "verifier/verifier.md": b"v"})
    v2 = _folder(tmp_path / "v2", {"coverage.md": b"v2!", "plots/a.png": b"png2"})
    storage.publish_dir(v2, str(dest), str(root))
    assert (dest / "coverage.md").read_bytes() == b"v2!" and not (dest / "old.csv").exists()  # its own old files go
    assert (dest / "samples" / "samples.jsonl").read_bytes() == b"{}\n" and (dest / "verifier" / "verifier.md").is_file()
    assert storage.is_complete(str(dest)) and sorted(p.name for p in root.iterdir()) == ["coverage"]  # no temp folders left
    (dest / "coverage.md").write_bytes(b"edited afterwards")
    assert storage.incomplete_reason(str(dest)) == f"{dest}/coverage.md is 17 bytes, the marker says 3: the folder changed after it was published"
    for bad in (root, tmp_path):
        with pytest.raises(storage.StorageError, match="it is the storage root .* or contains it"):
            storage.publish_dir(v2, str(bad), str(root))


def test_a_model_folder_under_the_root_is_read_only_once_published(tmp_path):
    root = tmp_path / "root"
    export = _folder(root / "sft" / "run" / "final_model", {"config.json": b"{}", "model.safetensors": b"\0" * 64})
    # What an export killed before its marker leaves (config.json and all): not a model.
    for spec in ("sft/run/final_model", str(export)):
        with pytest.raises(storage.StorageError, match=rf"model folder {export} is not complete: {export} has no _COMPLETE.json"):
            resolve_model_spec(spec, str(root))
    storage.publish_dir(_folder(tmp_path / "built", {"config.json": b"{}", "model.safetensors": b"\0" * 64}), str(export), str(root))
    assert resolve_model_spec("sft/run/final_model", str(root)) == str(export)
    # Outside the root (the embedded models' cache, a download): any Hugging Face folder, no marker needed.
    cached = _folder(tmp_path / "cache" / "tiny-gemma3-small-abc", {"config.json": b"{}"})
    assert resolve_model_spec(str(cached), str(root)) == str(cached)
    assert resolve_model_spec("tiny-gemma3-small", str(root)) == "tiny-gemma3-small"


def test_report_rebuild_refuses_a_half_written_report(tmp_path):
    root, report = tmp_path / "root", tmp_path / "root" / "report"
    _folder(report, {"table2_scaling.md": b"caption\n\n| a |\n| --- |\n| 1 |\n", "analysis_manifest.json": b"{}"})
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "report.py"), "--storage-root", str(root), "--report", "report"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"error: {report} is not a complete report: {report} has no _COMPLETE.json" in proc.stderr
    assert not (report / "report.html").exists()


HOLD = "import sys, time\nfrom ray_app.utils.run_lock import run_lock\nwith run_lock(sys.argv[1], 'samples folder'):\n" \
       "    print('held', flush=True)\n    time.sleep(300)\n"


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_first(tmp_path, capsys):
    folder = tmp_path / "root" / "samples"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = tmp_path / "root" / ".samples.lock.json"
        first = json.loads(lock.read_text())
        assert (first["pid"], first["host"]) == (holder.pid, socket.gethostname()) and first["user"] and first["started_at"]

        def second_run() -> int:
            with run_lock(str(folder), "samples folder"):
                return 0

        assert cli.run(second_run) == 2  # as a job reports it: one line, exit status 2
        err = capsys.readouterr().err
        assert f"error: samples folder {folder} is in use by another run: pid {holder.pid} on {socket.gethostname()}" in err
        assert "-c" in err and "(another --run-name or --out-dir)" in err
    finally:
        holder.kill()
        holder.wait()
    # Killed without releasing: its process is gone, so the lock is stale at once on this host.
    lines: list[str] = []
    with run_lock(str(folder), "samples folder", log=lines.append) as path:
        assert json.loads(Path(path).read_text())["pid"] == os.getpid()
    assert any("taking over the stale lock" in line and f"pid {holder.pid}" in line for line in lines), lines
    assert not Path(path).exists()  # released


def test_a_lock_without_heartbeat_is_taken_over_and_a_live_one_keeps_beating(tmp_path):
    folder = tmp_path / "sft" / "run"
    lock = tmp_path / "sft" / ".run.lock.json"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": "node-b", "pid": 4242, "user": "ann", "command": "python jobs/sft.py",
                                "started_at": "2025-01-01T00:00:00+00:00", "token": "other"}))
    with pytest.raises(RunLocked, match=r"SFT run 'run' .* is in use by another run: pid 4242 on node-b \(user ann"):
        with run_lock(str(folder), "SFT run 'run'"):
            pass
    os.utime(lock, (time.time() - 120,) * 2)  # node-b went away two minutes ago
    lines: list[str] = []
    with run_lock(str(folder), "SFT run 'run'", heartbeat_s=0.2, log=lines.append):
        os.utime(lock, (time.time() - 100,) * 2)
        time.sleep(0.8)
        assert time.time() - lock.stat().st_mtime < 5  # the heartbeat refreshed it
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert any("taking over the stale lock" in line and "pid 4242 on node-b" in line for line in lines), lines
    assert not lock.exists()


def test_files_get_the_permissions_of_the_umask(tmp_path):
    saved = os.umask(0o022)
    try:
        storage.write_text(str(tmp_path / "a.json"), "{}")
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644  # mkstemp alone would leave 0600
        storage.publish_dir(_folder(tmp_path / "built", {"x/y.md": b"y"}), str(tmp_path / "root" / "out"), str(tmp_path / "root"))
        out = tmp_path / "root" / "out"
        assert [(out / p).stat().st_mode & 0o777 for p in ("x/y.md", "_COMPLETE.json", "x", ".")] == [0o644, 0o644, 0o755, 0o755]
        os.umask(0o027)
        storage.write_text(str(tmp_path / "b.json"), "{}")
        assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(saved)
