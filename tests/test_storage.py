"""The storage module against real files and a real S3-compatible server (moto, on loopback), the
config rules that decide where things go, and the fingerprints that keep runs apart."""

import json
import os
from pathlib import Path

import pytest

from conftest import make_bucket, run_job
from ray_app import storage
from ray_app.config import BatchPlan, parse_job_config
from ray_app.utils.fingerprint import ConfigMismatch, check_or_record


def test_paths_resolve_under_the_root_and_uris_stay_intact(tmp_path):
    assert storage.join("s3://b/x", "sft", "run") == "s3://b/x/sft/run"  # Path() would make it s3:/b/x
    assert storage.under_root("s3://b/x", "data") == "s3://b/x/data"
    assert storage.under_root(str(tmp_path), "data") == str(tmp_path / "data")
    assert storage.under_root(str(tmp_path), "/abs/data") == "/abs/data"
    assert storage.under_root(str(tmp_path), "gs://o/p/") == "gs://o/p"
    cfg, args = parse_job_config("sft", "x", ["--storage-root", "s3://bucket/prefix", "--model", "google/gemma-3-1b-it"])
    assert args.storage_root == "s3://bucket/prefix"
    assert cfg.run_dir == "s3://bucket/prefix/sft/sft-gemma-3-1b-it"  # the run name carries the model
    assert cfg.resolved_export_dir == "s3://bucket/prefix/sft/sft-gemma-3-1b-it/final_model"
    assert cfg.resolved_train_file == "s3://bucket/prefix/data/gsm_symbolic_train.jsonl"


def test_root_comes_from_flag_then_environment_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv(storage.ROOT_ENV, str(tmp_path / "env-root"))
    assert storage.resolve_root() == str(tmp_path / "env-root")
    assert storage.resolve_root("s3://b/p/") == "s3://b/p"
    monkeypatch.delenv(storage.ROOT_ENV)
    assert storage.resolve_root() == str(Path("~/ray-app-gsm").expanduser())


def test_relative_root_is_refused_inside_a_jobs_temporary_working_dir(tmp_path, monkeypatch):
    copy = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    with pytest.raises(storage.StorageError, match="temporary copy of the working dir"):
        storage.resolve_root("outputs")
    assert storage.ephemeral_working_dir(copy) == str(copy)
    assert storage.ephemeral_working_dir(tmp_path) is None


def test_explicit_flag_beats_the_preset_and_contradicting_flags_are_refused(capsys):
    # The tiny preset sets effective_batch_size 16; an explicit accumulation replaces it, never the reverse.
    cfg, _ = parse_job_config("sft", "x", ["--gradient-accumulation-steps", "4"])
    plan = BatchPlan.from_config(cfg)
    assert (plan.gradient_accumulation_steps, plan.effective_batch_size) == (4, 8 * 4 * 2)
    cfg, _ = parse_job_config("sft", "x", ["--effective-batch-size", "32"])
    assert BatchPlan.from_config(cfg).gradient_accumulation_steps == 2
    with pytest.raises(SystemExit) as e:
        parse_job_config("sft", "x", ["--gradient-accumulation-steps", "4", "--effective-batch-size", "32"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--gradient-accumulation-steps and --effective-batch-size contradict" in err


def test_fingerprint_mismatch_names_the_fields(tmp_path):
    path = str(tmp_path / "run_config.json")
    fp = check_or_record(path, {"learning_rate": 1e-3, "seed": 1}, "SFT run 'x'", "--fresh-run")
    assert json.loads(Path(path).read_text())["fingerprint"] == fp
    assert check_or_record(path, {"learning_rate": 1e-3, "seed": 1}, "SFT run 'x'", "--fresh-run") == fp
    with pytest.raises(ConfigMismatch, match=r"learning_rate differs: learning_rate: 0.001 -> 0.0005.*--fresh-run"):
        check_or_record(path, {"learning_rate": 5e-4, "seed": 1}, "SFT run 'x'", "--fresh-run")


def test_s3_round_trip_listing_and_cached_downloads(s3_server, tmp_path):
    root = make_bucket("roundtrip") + "/prefix"
    storage.check_root(root)
    storage.write_json(storage.join(root, "a", "m.json"), {"x": 1})
    assert storage.read_json(storage.join(root, "a", "m.json")) == {"x": 1}
    assert storage.exists(storage.join(root, "a")) and storage.is_dir(storage.join(root, "a"))
    assert not storage.exists(storage.join(root, "nope"))

    local = tmp_path / "model"
    local.mkdir()
    (local / "config.json").write_text("{}")
    (local / "weights.bin").write_bytes(b"\0" * 1000)
    storage.publish_dir(local, storage.join(root, "model"), root)
    assert [storage.basename(p) for p in storage.list_files(storage.join(root, "model"))] == ["_COMPLETE.json", "config.json", "weights.bin"]
    copy = storage.local_copy(storage.join(root, "model"))
    assert (copy / "weights.bin").read_bytes() == b"\0" * 1000
    assert storage.local_copy(storage.join(root, "model")) == copy  # cached
    (local / "weights.bin").write_bytes(b"\1" * 10)  # the remote model changes: the next copy follows
    storage.publish_dir(local, storage.join(root, "model"), root)
    assert (storage.local_copy(storage.join(root, "model")) / "weights.bin").read_bytes() == b"\1" * 10
    storage.delete(storage.join(root, "model"), root)
    assert not storage.exists(storage.join(root, "model", "config.json"))
    assert not any(p.name.startswith("s3:") for p in Path.cwd().iterdir())


def test_missing_bucket_or_unreachable_endpoint_stops_at_start_naming_the_uri(s3_server, monkeypatch):
    with pytest.raises(storage.StorageError, match=r"s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist"):
        storage.check_root("s3://no-such-bucket/x")
    from conftest import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(storage.StorageError, match=r"s3://roundtrip/x"):
        storage.check_root("s3://roundtrip/x")


def test_a_job_with_a_missing_bucket_fails_before_any_work(s3_server):
    proc = run_job("sft.py", "--storage-root", "s3://missing-bucket/gsm", "--max-steps", "2", check=False, timeout=300)
    assert proc.returncode == 2
    assert "error: storage root s3://missing-bucket/gsm: bucket 'missing-bucket' does not exist" in proc.stderr
    assert "[ray]" not in proc.stdout  # stopped before connecting to Ray, let alone training


def test_data_built_into_a_bucket_reads_back(s3_server, tmp_path):
    """prepare_data with an s3:// root: built locally, uploaded; load_split reads it from the bucket."""
    from conftest import GSM8K_TEST
    from ray_app.data.gsm import has_data, load_split

    root = make_bucket("data-build") + "/gsm"
    run_job("prepare_data.py", "--storage-root", root, "--no-use-ray", "--num-templates", "3", "--train-size", "30",
            "--non-overlapping-size", "5", "--gsm8k-source", str(GSM8K_TEST), "--build-models", "", timeout=900)
    assert has_data(root + "/data")
    rows = load_split(root + "/data", "gsm_symbolic_train")
    assert len(rows) == 30 and rows[0]["template_id"] is not None
    assert not (Path.cwd() / "s3:").exists() and not os.path.exists("s3:")


def test_s3_deletes_stay_strictly_inside_the_root(s3_server):
    root = make_bucket("deletes") + "/root"
    for key in ("root/run/a.txt", "root2/keep.txt", "other/keep.txt"):
        storage.write_text(f"s3://deletes/{key}", "x")
    refused = [root, root + "/", "s3://deletes/root2/keep.txt", root + "/../other/keep.txt", root + "/run/../..",
               "s3://deletes", "", "s3://other-bucket/root/run", "/tmp/root/run"]
    for path in refused:
        with pytest.raises(storage.StorageError, match="refusing to delete"):
            storage.delete(path, root)
    assert all(storage.exists(f"s3://deletes/{k}") for k in ("root/run/a.txt", "root2/keep.txt", "other/keep.txt"))
    storage.delete(root + "//run/./", "S3://deletes/root/")  # normalised, it is inside
    assert not storage.exists(root + "/run/a.txt") and storage.exists("s3://deletes/root2/keep.txt")


def test_s3_publish_replaces_its_own_files_keeps_others_and_writes_the_marker_last(s3_server, tmp_path):
    root = make_bucket("publish") + "/gsm"
    dest = root + "/coverage"
    storage.write_text(dest + "/samples/samples.jsonl", "{}\n")  # another step's output in the same folder
    v1 = tmp_path / "v1"
    (v1 / "plots").mkdir(parents=True)
    (v1 / "coverage.md").write_text("v1")
    (v1 / "plots" / "a.png").write_bytes(b"png" * 100)
    storage.publish_dir(v1, dest, root)
    assert storage.is_complete(dest) and storage.read_marker(dest)["files"]["plots/a.png"]["size"] == 300
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "coverage.md").write_text("v2, longer")
    storage.publish_dir(v2, dest, root)
    names = [p[len(dest) + 1:] for p in storage.list_files(dest, recursive=True)]
    assert names == ["_COMPLETE.json", "coverage.md", "samples/samples.jsonl"]  # plots/a.png was v1's: gone
    assert storage.read_text(dest + "/coverage.md") == "v2, longer" and storage.is_complete(dest)
    storage.write_text(dest + "/coverage.md", "x")
    assert "coverage.md is 1 bytes, the marker says 10" in storage.incomplete_reason(dest)


def test_s3_publish_killed_midway_is_never_read_as_a_model(s3_server, tmp_path):
    """A publish killed while uploading (as a worker dies mid-export) leaves objects but no marker: the
    folder is never taken for a model, and a job naming it stops at start with status 2."""
    import subprocess
    import sys
    import time

    from conftest import ROOT
    from ray_app.models.registry import resolve_model_spec

    root = make_bucket("interrupted") + "/gsm"
    model = root + "/sft/run/final_model"
    local = tmp_path / "model"
    local.mkdir()
    (local / "config.json").write_text("{}")
    for i in range(200):
        (local / f"shard-{i:03d}.bin").write_bytes(os.urandom(16384))
    code = "import sys\nfrom ray_app import storage\nstorage.publish_dir(sys.argv[1], sys.argv[2], sys.argv[3])\n"
    proc = subprocess.Popen([sys.executable, "-c", code, str(local), model, root], cwd=ROOT)
    try:
        deadline = time.time() + 120
        while len(storage.list_files(model)) < 5:
            assert proc.poll() is None and time.time() < deadline, "the publish ended before it could be interrupted"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    uploaded = storage.list_files(model)
    assert 5 <= len(uploaded) < 201 and storage.join(model, "_COMPLETE.json") not in uploaded
    assert not storage.is_complete(model)
    with pytest.raises(storage.StorageError, match=rf"model folder {model} is not complete: {model} has no _COMPLETE.json"):
        resolve_model_spec("sft/run/final_model", root)
    job = run_job("sample.py", "--storage-root", root, "--models", "sft=sft/run/final_model", check=False, timeout=300)
    assert job.returncode == 2 and f"error: model folder {model} is not complete" in job.stderr
    assert "[ray]" not in job.stdout
    storage.publish_dir(local, model, root)  # published whole, it is a model
    assert resolve_model_spec("sft/run/final_model", root) == model and storage.is_complete(model)


def test_s3_run_lock_is_held_once_and_a_stale_lease_is_taken_over(s3_server):
    import socket
    import time

    import boto3

    from ray_app.utils.run_lock import RunLocked, run_lock

    root = make_bucket("locks") + "/gsm"
    folder = root + "/samples"
    with run_lock(folder, "samples folder", heartbeat_s=0.3) as lock:
        assert lock == root + "/.samples.lock.json" and storage.read_json(lock)["pid"] == os.getpid()
        with pytest.raises(RunLocked, match=rf"samples folder {folder} is in use by another run: pid {os.getpid()} on "
                                            rf"{socket.gethostname()}"):
            with run_lock(folder, "samples folder"):
                pass
        time.sleep(1)  # heartbeats (conditional on the lease's ETag) keep it ours
        assert storage.read_json(lock)["pid"] == os.getpid()
    assert not storage.exists(lock)
    # A lease whose holder on another node stopped beating: refused while fresh, taken over once stale.
    holder = {"host": "node-b", "pid": 4242, "user": "ann", "command": "python jobs/sample.py", "token": "t"}
    boto3.client("s3").put_object(Bucket="locks", Key="gsm/.samples.lock.json", Body=json.dumps(holder).encode())
    with pytest.raises(RunLocked, match=r"pid 4242 on node-b \(user ann"):
        with run_lock(folder, "samples folder", stale_s=2):
            pass
    time.sleep(3.5)
    lines: list[str] = []
    with run_lock(folder, "samples folder", stale_s=2, log=lines.append):
        assert storage.read_json(lock)["pid"] == os.getpid()
    assert any("took over the stale lock" in line and "pid 4242 on node-b" in line for line in lines), lines


# ------------------------------------------------------------------------------------------------
# Credentials in storage URIs: hidden in logs, errors and manifests (storage.redact)
# ------------------------------------------------------------------------------------------------

SECRET_URIS = {
    "s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/gsm": "s3://***@bucket/gsm",
    "s3://AKIAEXAMPLE:wJalr/XUtn+FEMI@bucket/gsm/x": "s3://***@bucket/gsm/x",  # a raw '/' in the secret
    "https://ann:hunter2@files.example.com:8443/gsm?part=1": "https://***@files.example.com:8443/gsm?part=1",
    "https://b.s3.amazonaws.com/k.json?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20260101"
    "&X-Amz-Security-Token=FQoG&X-Amz-Signature=deadbeef":
        "https://b.s3.amazonaws.com/k.json?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***"
        "&X-Amz-Security-Token=***&X-Amz-Signature=***",
    "https://acct.blob.core.windows.net/c/gsm?sv=2022-11-02&se=2030-01-01&sp=rl&sig=abc%2Bdef":
        "https://acct.blob.core.windows.net/c/gsm?sv=2022-11-02&se=2030-01-01&sp=rl&sig=***",
    "https://hub.example.com/gsm?token=hf_secret": "https://hub.example.com/gsm?token=***",
}
PLAIN = ["s3://bucket/gsm", "gs://bucket/gsm/sft/run", "/home/ann/ray-app-gsm", "outputs/x@y", "~/ray-app-gsm",
         "s3://bucket/gsm?region=us-west-2&endpoint_override=127.0.0.1:9000", "s3://bucket/a b/c.jsonl", ""]


@pytest.mark.parametrize("uri", SECRET_URIS)
def test_redact_hides_userinfo_and_credential_parameters(uri):
    assert storage.redact(uri) == SECRET_URIS[uri]
    assert storage.redact(storage.redact(uri)) == SECRET_URIS[uri]  # idempotent: errors are redacted again when unpickled
    for secret in ("wJalr", "hunter2", "deadbeef", "FQoG", "abc", "hf_secret", "AKIAEXAMPLE:"):
        assert secret not in storage.redact(uri)
    # inside a message, each URI is redacted and the words around it kept
    assert storage.redact(f"cannot read '{uri}' (see {uri})") == f"cannot read '{SECRET_URIS[uri]}' (see {SECRET_URIS[uri]})"


@pytest.mark.parametrize("path", PLAIN)
def test_redact_leaves_paths_and_uris_without_credentials_unchanged(path):
    assert storage.redact(path) == path


def test_describe_root_and_storage_errors_name_a_uri_without_its_credentials(tmp_path):
    uri = "s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/gsm"
    assert storage.describe_root(uri) == "[storage] root: s3://***@bucket/gsm"
    assert storage.describe_root(str(tmp_path)).startswith(f"[storage] root: {tmp_path}")  # plain paths as they are
    with pytest.raises(storage.StorageError) as e:  # pyarrow's own message names the URI too
        storage.filesystem("nosuchfs://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/gsm")
    assert "wJalr" not in str(e.value) and "nosuchfs://***@bucket/gsm" in str(e.value)
    with pytest.raises(storage.StorageError, match=r"refusing to delete 's3://\*\*\*@bucket/x'") as e:
        storage.delete("s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/x", uri)
    assert "wJalr" not in str(e.value)
    err = storage.NotFound(f"{uri}/x: not found")
    assert isinstance(err, FileNotFoundError) and str(err) == "s3://***@bucket/gsm/x: not found"


def test_manifests_record_storage_uris_without_credentials(tmp_path):
    """The SFT run manifest (the config with every location) as written: the credential-bearing URI is
    redacted, local paths are unchanged, and the config the run goes on with keeps the real URI."""
    from dataclasses import asdict

    from ray_app.trainer.sft import save_run_manifest
    from ray_app.utils.run_info import redacted

    uri = "s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/gsm/train.jsonl"
    cfg, _ = parse_job_config("sft", "x", ["--storage-root", str(tmp_path), "--train-file", uri])
    path = save_run_manifest(cfg, {"log_history": [], "steps": 2}, {"inputs": [uri, str(tmp_path / "data")]})
    text = Path(path).read_text()
    assert "wJalr" not in text and "AKIAEXAMPLE" not in text
    manifest = json.loads(text)
    assert manifest["config"]["train_file"] == "s3://***@bucket/gsm/train.jsonl"
    assert manifest["inputs"] == ["s3://***@bucket/gsm/train.jsonl", str(tmp_path / "data")]
    assert manifest["config"]["storage_path"] == cfg.storage_path == str(tmp_path / "sft")  # local paths as they are
    assert manifest["steps"] == 2 and cfg.train_file == uri  # the run itself still reads the real URI
    record = {"config": asdict(cfg), "n": 3, "nested": [{"root": uri}], "none": None}
    assert redacted(record)["nested"][0]["root"] == "s3://***@bucket/gsm/train.jsonl"
    assert redacted(record)["n"] == 3 and redacted(record)["none"] is None and record["nested"][0]["root"] == uri


def test_job_output_and_data_manifests_hide_credentials(tmp_path, capsys):
    """What a job prints (cli.run wraps stdout/stderr) and the data build's manifests name a storage URI
    without its key; the build still reads the real location."""
    import sys

    from ray_app import cli
    from ray_app.data.gsm import build_settings
    from ray_app.config import DataConfig

    uri = "s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/gsm"

    def job():
        print(f"[data] building into {uri}/data")
        print(f"[warn] cannot reach {uri}/x.", file=sys.stderr)
        return 0

    streams = sys.stdout, sys.stderr
    assert cli.run(job) == 0
    out = capsys.readouterr()
    assert out.out == "[data] building into s3://***@bucket/gsm/data\n"
    assert out.err == "[warn] cannot reach s3://***@bucket/gsm/x.\n"
    assert (sys.stdout, sys.stderr) == streams  # put back after the job

    cfg = DataConfig(gsm8k_source=f"{uri}/train.jsonl")
    assert build_settings(cfg)["gsm8k_source"] == "s3://***@bucket/gsm/train.jsonl" and cfg.gsm8k_source.startswith(uri)
