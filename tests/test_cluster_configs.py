"""The cluster configs in cluster/: schema-valid, token auth on, dashboard not exposed, an idle head,
GPU workers from 0, and a Modal app whose command lines parse with each job's own parser.

Launcher YAMLs validate against Ray's own ray/autoscaler/ray-schema.json; KubeRay objects against
the v1 openAPIV3Schema of KubeRay's CRDs (../shared/schemas/kuberay), strictly: unknown fields are
errors, as with `kubectl apply --validate=strict` (the API server would otherwise drop them).
No cloud, cluster or Modal account is needed.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
CRD_DIR = ROOT.parent / "shared" / "schemas" / "kuberay"
LAUNCHER_CONFIGS = ["aws.yaml", "gcp.yaml"]
# The local autoscaling cluster (Ray's fake_multinode provider, tests/test_autoscaling.py runs it): the
# whole file is schema-valid, but it has no cloud setup, so the cloud checks below do not apply.
SCHEMA_CONFIGS = LAUNCHER_CONFIGS + ["fake_multinode.yaml"]
KUBERAY_FILES = ["kuberay-raycluster.yaml", "kuberay-rayjob-sft.yaml", "kuberay-rayjob-pipeline.yaml"]
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}


# ------------------------------------------------------------------------------------------------
# Ray cluster launcher
# ------------------------------------------------------------------------------------------------


def ray_schema() -> dict:
    import ray

    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def launcher(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def commands(cmds: list[str]) -> str:
    return "\n".join(cmds)


@pytest.mark.parametrize("name", SCHEMA_CONFIGS)
def test_launcher_config_validates_against_ray_schema(name):
    jsonschema.validate(launcher(name), ray_schema())


@pytest.mark.parametrize("name", SCHEMA_CONFIGS)
@pytest.mark.parametrize("breakage", ["misspelled_key", "wrong_type", "misspelled_node_key"])
def test_launcher_schema_rejects_broken_copy(name, breakage):
    config = launcher(name)
    if breakage == "misspelled_key":
        config["head_start_ray_command"] = config.pop("head_start_ray_commands")
    elif breakage == "wrong_type":
        config["max_workers"] = "six"
    else:
        node = config["available_node_types"][config["head_node_type"]]
        node["resource"] = node.pop("resources")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, ray_schema())


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_token_auth_and_private_dashboard(name):
    config = launcher(name)
    head, worker = commands(config["head_start_ray_commands"]), commands(config["worker_start_ray_commands"])
    start_head = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert len(start_head) == 1 and "--dashboard-host=127.0.0.1" in start_head[0]
    assert "RAY_AUTH_MODE=token" in start_head[0]
    # the token exists before `ray start --head`, and reaches every worker before it starts Ray
    assert head.index("ray get-auth-token --generate") < head.index("ray start --head")
    assert "RAY_AUTH_MODE=token" in worker
    assert any(p.endswith("/.ray/auth_token") for p in config["cluster_synced_files"])
    assert "0.0.0.0" not in (CLUSTER / name).read_text()


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_idle_head_and_gpu_workers_from_zero(name):
    config = launcher(name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert any("--num-cpus=0" in c for c in config["head_start_ray_commands"])
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    gpu_types = [k for k in workers if k.startswith("gpu")]
    assert len(gpu_types) >= 2  # one for 4B SFT under ZeRO-3, one for the 8B reward model
    for k, v in workers.items():
        assert v.get("min_workers", 0) == 0, k
        assert v["max_workers"] >= 1, k


def test_fake_multinode_idle_head_gpu_workers_from_zero_and_quick_scale_down():
    config = launcher("fake_multinode.yaml")
    assert config["provider"]["type"] == "fake_multinode"
    # The provider names the head's type ray.head.default and tells nodes on one IP apart by node id.
    assert config["head_node_type"] == "ray.head.default" and config["provider"]["use_node_id_as_ip"] is True
    assert config["available_node_types"]["ray.head.default"]["resources"] == {"CPU": 0, "GPU": 0}
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] == 1 and gpu.get("min_workers", 0) == 0 and gpu["max_workers"] >= 1
    assert 0 < config["idle_timeout_minutes"] <= 1  # idle workers go within a minute
    # No defaults file in the wheel (fake_multi_node/example.yaml): every key the autoscaler reads is here.
    for key in ("file_mounts", "cluster_synced_files", "worker_setup_commands", "worker_start_ray_commands",
                "max_workers", "upscaling_speed", "auth"):
        assert key in config, key


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_installs_project_and_writes_bucket(name):
    config = launcher(name)
    remote, local = next(iter(config["file_mounts"].items()))
    assert local == "." and remote.endswith("ray-app-gsm")
    setup = commands(config["setup_commands"])
    assert f"cd {remote} &&" in setup and "bash scripts/setup.sh" in setup
    scheme = {"aws.yaml": "s3://", "gcp.yaml": "gs://"}[name]
    for cmds in (setup, commands(config["head_start_ray_commands"]), commands(config["worker_start_ray_commands"])):
        assert f"RAY_APP_STORAGE_ROOT={scheme}" in cmds or f"RAY_APP_STORAGE_ROOT='{scheme}" in cmds
    for key, node in config["available_node_types"].items():  # every node has the bucket identity
        nc = node["node_config"]
        assert "IamInstanceProfile" in nc or "serviceAccounts" in nc, key


# ------------------------------------------------------------------------------------------------
# KubeRay
# ------------------------------------------------------------------------------------------------


def _strict(schema):
    """Unknown fields become errors: additionalProperties false wherever the CRD lists properties."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


_CRD_CACHE: dict[str, dict] = {}
_VALIDATORS: dict[str, jsonschema.protocols.Validator] = {}
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are large


def crd_schema(kind: str) -> dict:
    if kind not in _CRD_CACHE:
        crd = yaml.load((CRD_DIR / CRD_FILES[kind]).read_text(), Loader=_Loader)
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        _CRD_CACHE[kind] = _strict(version["schema"]["openAPIV3Schema"])
    return _CRD_CACHE[kind]


def validate_kuberay(obj: dict) -> None:
    assert obj["apiVersion"] == "ray.io/v1"
    if obj["kind"] not in _VALIDATORS:
        schema = crd_schema(obj["kind"])
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)  # the strict copy is still a valid schema
        _VALIDATORS[obj["kind"]] = cls(schema)
    _VALIDATORS[obj["kind"]].validate(obj)


def kuberay_docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


def ray_objects(name: str) -> list[dict]:
    return [d for d in kuberay_docs(name) if d["kind"] in CRD_FILES]


def cluster_specs(obj: dict) -> dict:
    return obj["spec"] if obj["kind"] == "RayCluster" else obj["spec"]["rayClusterSpec"]


needs_crds = pytest.mark.skipif(not CRD_DIR.is_dir(), reason=f"needs KubeRay's RayCluster/RayJob CRDs (ray.io_rayclusters.yaml, "
                                f"ray.io_rayjobs.yaml from ray-project/kuberay's ray-operator/config/crd/bases) in {CRD_DIR}: "
                                "put the project's shared/ folder beside the checkout (CI has it)")


@needs_crds
@pytest.mark.parametrize("name", KUBERAY_FILES)
def test_kuberay_validates_against_crd(name):
    objs = ray_objects(name)
    assert objs
    for obj in objs:
        validate_kuberay(obj)


@needs_crds
@pytest.mark.parametrize("breakage", ["misspelled_key", "wrong_type", "bad_enum", "misspelled_nested_key"])
@pytest.mark.parametrize("name", KUBERAY_FILES)
def test_kuberay_schema_rejects_broken_copy(name, breakage):
    obj = copy.deepcopy(ray_objects(name)[0])
    spec = cluster_specs(obj)
    if breakage == "misspelled_key":
        spec["enableInTreeAutoscalling"] = spec.pop("enableInTreeAutoscaling")
    elif breakage == "wrong_type":
        spec["workerGroupSpecs"][0]["minReplicas"] = "zero"
    elif breakage == "bad_enum":
        spec["authOptions"]["mode"] = "tokens"
    else:
        container = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        container["imagee"] = container.pop("image")
    with pytest.raises(jsonschema.ValidationError):
        validate_kuberay(obj)


@needs_crds
def test_crd_has_the_fields_the_manifests_rely_on():
    spec = crd_schema("RayCluster")["properties"]["spec"]["properties"]
    assert spec["authOptions"]["properties"]["mode"]["enum"] == ["disabled", "token"]
    assert "enableInTreeAutoscaling" in spec
    job = crd_schema("RayJob")["properties"]["spec"]["properties"]
    assert {"shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "rayClusterSpec"} <= set(job)


@pytest.mark.parametrize("name", KUBERAY_FILES)
def test_kuberay_token_auth_and_private_dashboard(name):
    for doc in kuberay_docs(name):
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP"
        assert doc["kind"] != "Ingress"
    for obj in ray_objects(name):
        spec = cluster_specs(obj)
        assert spec["authOptions"]["mode"] == "token"
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP"
        assert not head.get("enableIngress", False)
        svc_type = head.get("headService", {}).get("spec", {}).get("type", "ClusterIP")
        assert svc_type == "ClusterIP"
        assert head["rayStartParams"].get("dashboard-host") != "0.0.0.0"
        for group in spec["workerGroupSpecs"]:
            assert group["rayStartParams"].get("dashboard-host") != "0.0.0.0"
    text = (CLUSTER / name).read_text()
    assert "LoadBalancer" not in text and "NodePort" not in text


@pytest.mark.parametrize("name", KUBERAY_FILES)
def test_kuberay_idle_head_gpu_groups_from_zero_and_bucket(name):
    for obj in ray_objects(name):
        spec = cluster_specs(obj)
        assert spec["enableInTreeAutoscaling"] is True
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        gpu_groups = [g for g in spec["workerGroupSpecs"]
                      if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"].get("limits", {})]
        assert len(gpu_groups) >= 2
        for group in spec["workerGroupSpecs"]:
            assert group["minReplicas"] == 0 and group.get("replicas", 0) == 0, group["groupName"]
        pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        for pod in pods:
            env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
            assert env["RAY_APP_STORAGE_ROOT"]["value"].startswith(("s3://", "gs://"))
            assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert pod["spec"]["serviceAccountName"]


def test_rayjobs_shut_down_and_run_the_jobs():
    cluster_spec = ray_objects("kuberay-raycluster.yaml")[0]["spec"]
    expected = {"kuberay-rayjob-sft.yaml": ("jobs/sft.py", "--preset gemma3-4b"),
                "kuberay-rayjob-pipeline.yaml": ("jobs/pipeline.py", "--preset gemma3-1b")}
    for name, (script, preset) in expected.items():
        (job,) = ray_objects(name)
        assert job["kind"] == "RayJob"
        spec = job["spec"]
        assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
        assert script in spec["entrypoint"] and preset in spec["entrypoint"]
        assert "--storage-root s3://" in spec["entrypoint"]
        assert spec["rayClusterSpec"] == cluster_spec  # the same cluster settings as the RayCluster
        argv = spec["entrypoint"].split()[2:]
        parse_with_job_parser(Path(script).stem, argv)


# ------------------------------------------------------------------------------------------------
# Modal
# ------------------------------------------------------------------------------------------------


class _Parsed(Exception):
    pass


def parse_with_job_parser(job: str, argv: list[str]):
    """Parse argv exactly as jobs/<job>.py's main() does, then stop before the job runs."""
    spec = importlib.util.spec_from_file_location(f"_job_{job}", ROOT / "jobs" / f"{job}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert hasattr(module, "parse_job_config"), f"jobs/{job}.py does not parse with ray_app.config"
    real = module.parse_job_config
    parsed = {}

    def parse_and_stop(*args, **kwargs):
        parsed["cfg"], parsed["args"] = real(*args, **kwargs)
        raise _Parsed

    module.parse_job_config = parse_and_stop
    try:
        module.main(argv)
    except _Parsed:
        return parsed["cfg"], parsed["args"]
    except SystemExit as e:  # argparse's error exit: an unknown flag or a bad value
        raise AssertionError(f"jobs/{job}.py rejects {argv}: exit {e.code}") from None
    raise AssertionError(f"jobs/{job}.py main() did not call parse_job_config")


@pytest.fixture(scope="module")
def modal_app():
    pytest.importorskip("modal")
    saved = {k: os.environ.pop(k) for k in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_PROFILE") if k in os.environ}
    os.environ["MODAL_CONFIG_PATH"] = str(ROOT / "cluster" / "no-such-modal.toml")  # no credentials at all
    try:
        spec = importlib.util.spec_from_file_location("_modal_app", CLUSTER / "modal_app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["_modal_app"] = module
        spec.loader.exec_module(module)
        yield module
    finally:
        os.environ.pop("MODAL_CONFIG_PATH", None)
        os.environ.update(saved)
        sys.modules.pop("_modal_app", None)


def test_modal_app_imports_without_credentials_and_has_the_stages(modal_app):
    import modal

    assert isinstance(modal_app.app, modal.App)
    assert modal_app.ORDER == ["sft", "evaluate", "sample"]
    assert set(modal_app.JOB_ARGS) == set(modal_app.ORDER) == set(modal_app.FUNCTIONS)
    for job in modal_app.ORDER:
        assert isinstance(modal_app.FUNCTIONS[job], modal.Function)
    assert callable(modal_app.launch_all)


@pytest.mark.parametrize("job", ["sft", "evaluate", "sample"])
def test_modal_command_lines_parse_with_the_jobs_parsers(modal_app, job):
    cmd = modal_app.job_command(job)
    assert cmd[:2] == ["python", f"{modal_app.REMOTE_PROJECT}/jobs/{job}.py"]
    assert cmd[2:4] == ["--storage-root", modal_app.OUTPUTS]
    cfg, args = parse_with_job_parser(job, cmd[2:])
    assert args.storage_root == modal_app.OUTPUTS
    assert args.preset == modal_app.PRESET
    if job != "sft":  # evaluation and sampling read the model sft exports
        assert modal_app.SFT_MODEL in ",".join(str(v) for v in vars(cfg).values())


def test_modal_sft_model_is_where_sft_exports_it(modal_app):
    cfg, _ = parse_with_job_parser("sft", modal_app.job_command("sft")[2:])
    assert cfg.resolved_export_dir == f"{modal_app.OUTPUTS}/{modal_app.SFT_MODEL}"
