"""The cluster configs in cluster/: schema-valid, token auth on, dashboard not exposed, closed networks
(SSH from one configurable CIDR, nodes on internal IPs, a NetworkPolicy and non-root containers on
KubeRay), an idle head, GPU workers from 0, and a Modal app whose command lines parse with each job's
own parser. Each closed-network check is also run on a broken copy, which it must refuse.

Launcher YAMLs validate against Ray's own ray/autoscaler/ray-schema.json; KubeRay objects against
the v1 openAPIV3Schema of KubeRay's CRDs (../shared/schemas/kuberay), strictly: unknown fields are
errors, as with `kubectl apply --validate=strict` (the API server would otherwise drop them).
No cloud, cluster or Modal account is needed.
"""

from __future__ import annotations

import copy
import importlib.util
import ipaddress
import json
import os
import re
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
# Launcher networks: SSH from SSH_CIDR only, nodes on internal IPs
# ------------------------------------------------------------------------------------------------
#
# Ray's launcher makes no restricted SSH rule itself (the AWS group it makes lets SSH in from anywhere,
# GCP gets no firewall rules), so each config names a group / network the user makes with the commands
# in its header comments, from one SSH_CIDR. The checks read both: the config and those commands.

SSH_CIDR_SET = re.compile(r"^#\s+SSH_CIDR=(\S+)", re.M)
NODE_TAG = "ray-app-gsm"


def documented_commands(text: str) -> list[str]:
    """The shell commands in a config's comments, one string each (backslash continuations joined)."""
    commands, current = [], ""
    for line in (raw[1:].strip() for raw in text.splitlines() if raw.startswith("#")):
        part = line.rstrip("\\").strip()
        current = f"{current} {part}".strip()
        if not line.endswith("\\"):
            commands.append(current)
            current = ""
    return commands


def check_ssh_cidr(text: str) -> None:
    """SSH_CIDR is set once, to a network no larger than a /8 (never the whole internet), and the only
    address-based rules the commands make are SSH (port 22) from it."""
    values = SSH_CIDR_SET.findall(text)
    assert len(values) == 1, f"SSH_CIDR is set {len(values)} times in the comments"
    cidr = ipaddress.ip_network(values[0], strict=False)
    assert cidr.num_addresses <= 2 ** 24, f"SSH_CIDR={cidr}: SSH open to far more than a VPN or bastion range"
    sources = re.findall(r"--(?:cidr|source-ranges)[ =](\S+)", text)
    assert sources and set(sources) == {'"$SSH_CIDR"'}, f"rules from other addresses: {sources}"
    ssh = [c for c in documented_commands(text) if '"$SSH_CIDR"' in c]
    assert ssh and all("--port 22 " in c or "--allow tcp:22 " in c for c in ssh), ssh


def check_aws_closed(config: dict, text: str) -> None:
    check_ssh_cidr(text)
    provider = config["provider"]
    assert provider.get("use_internal_ips") is True, "nodes would be reached on public IPs"
    assert "security_group" not in provider, "provider.security_group only adds rules to the launcher's own group, " \
                                             "which lets SSH in from anywhere"
    rules = [c for c in documented_commands(text) if "authorize-security-group-ingress" in c]
    assert any('--source-group "$SG"' in c for c in rules), "no rule lets the nodes reach each other"
    groups = {json.dumps(n["node_config"].get("SecurityGroupIds")) for n in config["available_node_types"].values()}
    subnets = {json.dumps(n["node_config"].get("SubnetIds")) for n in config["available_node_types"].values()}
    # Every node type in the one group and the private subnets: a type without them gets the launcher's group.
    assert len(groups) == 1 and json.loads(groups.pop()), "a node type without the SSH_CIDR group"
    assert len(subnets) == 1 and json.loads(subnets.pop()), "a node type without the private subnets"
    for key, node in config["available_node_types"].items():
        for nic in node["node_config"].get("NetworkInterfaces", []):
            assert not nic.get("AssociatePublicIpAddress"), key


def check_gcp_closed(config: dict, text: str) -> None:
    check_ssh_cidr(text)
    assert config["provider"].get("use_internal_ips") is True, "nodes would be reached on external IPs"
    rules = [c for c in documented_commands(text) if "firewall-rules create" in c]
    assert rules and all(f"--target-tags {NODE_TAG}" in c for c in rules), rules
    assert any(f"--source-tags {NODE_TAG}" in c for c in rules), "no rule lets the nodes reach each other"
    for key, node in config["available_node_types"].items():
        nc = node["node_config"]
        # Without networkInterfaces the launcher gives the node the default network and an external IP.
        assert nc.get("networkInterfaces"), f"{key}: no networkInterfaces (the launcher's default has an external IP)"
        for nic in nc["networkInterfaces"]:
            assert nic.get("subnetwork") and "accessConfigs" not in nic, f"{key}: an external IP"
        assert NODE_TAG in nc.get("tags", {}).get("items", []), f"{key}: not tagged {NODE_TAG}, its firewall rules miss it"


CLOSED_CHECKS = {"aws.yaml": check_aws_closed, "gcp.yaml": check_gcp_closed}


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_ssh_only_from_the_configured_cidr_and_nodes_on_internal_ips(name):
    CLOSED_CHECKS[name](launcher(name), (CLUSTER / name).read_text())


LAUNCHER_BREAKAGES = {
    "aws.yaml": ["cidr_everywhere", "cidr_unset", "rule_from_anywhere", "public_ips", "node_without_group",
                 "node_without_subnets", "launcher_security_group"],
    "gcp.yaml": ["cidr_everywhere", "cidr_unset", "rule_from_anywhere", "public_ips", "external_ip",
                 "node_without_network", "node_untagged"],
}


@pytest.mark.parametrize("name,breakage", [(n, b) for n, bs in LAUNCHER_BREAKAGES.items() for b in bs])
def test_launcher_closed_checks_refuse_a_broken_copy(name, breakage):
    text = (CLUSTER / name).read_text()
    config = copy.deepcopy(launcher(name))
    (cidr,) = SSH_CIDR_SET.findall(text)
    worker = next(v for k, v in config["available_node_types"].items() if k != config["head_node_type"])["node_config"]
    if breakage == "cidr_everywhere":
        text = text.replace(f"SSH_CIDR={cidr}", "SSH_CIDR=0.0.0.0/0")
    elif breakage == "cidr_unset":
        text = text.replace(f"SSH_CIDR={cidr}", "")
    elif breakage == "rule_from_anywhere":
        text = text.replace('--cidr "$SSH_CIDR"', "--cidr 0.0.0.0/0").replace('--source-ranges "$SSH_CIDR"', "--source-ranges 0.0.0.0/0")
    elif breakage == "public_ips":
        config["provider"]["use_internal_ips"] = False
    elif breakage == "node_without_group":
        del worker["SecurityGroupIds"]
    elif breakage == "node_without_subnets":
        del worker["SubnetIds"]
    elif breakage == "launcher_security_group":
        config["provider"]["security_group"] = {"GroupName": "ray-app-gsm", "IpPermissions": []}
    elif breakage == "external_ip":
        worker["networkInterfaces"] = [{**worker["networkInterfaces"][0], "accessConfigs": [{"type": "ONE_TO_ONE_NAT"}]}]
    elif breakage == "node_without_network":
        del worker["networkInterfaces"]
    else:
        worker["tags"] = {"items": []}
    with pytest.raises(AssertionError):
        CLOSED_CHECKS[name](config, text)


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


# Closed by default on Kubernetes: who reaches the Ray pods, and as which user they run.

POLICY_FILE = "kuberay-raycluster.yaml"  # beside the ServiceAccount every cluster of the app uses (its comment says why)
RAY_USER = 1000  # the `ray` user of the rayproject/ray images
JOB_API_PORT = 8265
OPERATOR_NAMESPACE_KEY = "kubernetes.io/metadata.name"  # set by Kubernetes itself: a namespace cannot fake it


def network_policies() -> list[dict]:
    return [d for d in kuberay_docs(POLICY_FILE) if d["kind"] == "NetworkPolicy"]


def selects(selector: dict, labels: dict) -> bool:
    """Whether a Kubernetes label selector (matchLabels / matchExpressions) selects these labels."""
    ops = {"In": lambda k, v: labels.get(k) in v, "NotIn": lambda k, v: labels.get(k) not in v,
           "Exists": lambda k, v: k in labels, "DoesNotExist": lambda k, v: k not in labels}
    return (all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
            and all(ops[e["operator"]](e["key"], e.get("values", [])) for e in selector.get("matchExpressions", [])))


def pod_labels(obj: dict) -> dict[str, dict]:
    """The labels KubeRay gives each kind of Pod: the template's, plus its own node type and cluster name
    (a RayJob's cluster has a generated name)."""
    spec = cluster_specs(obj)
    cluster = obj["metadata"]["name"] if obj["kind"] == "RayCluster" else obj["metadata"]["name"] + "-x7k2p"
    pods = {"head": {**spec["headGroupSpec"]["template"].get("metadata", {}).get("labels", {}), "ray.io/node-type": "head"}}
    for group in spec["workerGroupSpecs"]:
        pods[group["groupName"]] = {**group["template"].get("metadata", {}).get("labels", {}), "ray.io/node-type": "worker",
                                    "ray.io/group": group["groupName"]}
    return {k: {**v, "ray.io/cluster": cluster} for k, v in pods.items()}


def check_network_policy(policies: list[dict], obj: dict) -> None:
    """Every Ray pod of the cluster is guarded by an Ingress NetworkPolicy whose rules admit only (a) the
    cluster's own pods, on any port; (b) submitter pods of this namespace and (c) the KubeRay operator's
    pods of one named namespace, on the job API port only. No rule is open to every pod, namespace or
    address; a RayJob's submitter is admitted to the job API."""
    pods = pod_labels(obj)
    for policy in policies:
        assert policy["apiVersion"] == "networking.k8s.io/v1" and set(policy["spec"]) <= {"podSelector", "policyTypes", "ingress", "egress"}
    for pod, labels in pods.items():
        guarding = [p for p in policies if "Ingress" in p["spec"].get("policyTypes", []) and selects(p["spec"]["podSelector"], labels)]
        assert guarding, f"no NetworkPolicy guards the {pod} pods: anything in the cluster reaches them"
        for policy in guarding:
            for rule in policy["spec"].get("ingress", []):
                assert rule.get("from"), f"{policy['metadata']['name']}: a rule without 'from' admits every pod and address"
                ports = {p.get("port") for p in rule.get("ports", [])}
                for peer in rule["from"]:
                    assert set(peer) <= {"podSelector", "namespaceSelector"}, f"an ipBlock or unknown peer: {peer}"
                    selector = peer.get("podSelector")
                    assert selector and (selector.get("matchLabels") or selector.get("matchExpressions")), \
                        f"a peer that selects every pod of its namespace(s): {peer}"
                    if "namespaceSelector" in peer:  # the operator, in the one namespace it was installed in
                        names = peer["namespaceSelector"].get("matchLabels", {})
                        assert set(names) == {OPERATOR_NAMESPACE_KEY}, f"a peer in any namespace: {peer}"
                        assert selects(selector, {"app.kubernetes.io/component": "kuberay-operator"}), peer
                        assert ports == {JOB_API_PORT}, f"the operator reaches ports {ports}"
                    elif all(selects(selector, other) for other in pods.values()):  # the cluster's own pods
                        assert selector.get("matchLabels", {}).get("ray-app/ray-node") == "true", f"selects more than Ray pods: {peer}"
                    else:  # anything else is a submitter, and reaches the job API only
                        assert selector.get("matchLabels") == {"ray-app/submitter": "true"}, f"an unexpected peer: {peer}"
                        assert ports == {JOB_API_PORT}, f"submitters reach ports {ports}"
    if obj["kind"] == "RayJob":
        submitter = obj["spec"]["submitterPodTemplate"]["metadata"]["labels"]
        assert any(selects(peer.get("podSelector", {}), submitter) and "namespaceSelector" not in peer
                   and JOB_API_PORT in {p.get("port") for p in rule.get("ports", [])}
                   for p in policies for rule in p["spec"].get("ingress", []) for peer in rule["from"]), \
            "the RayJob's submitter cannot reach the job API"


def check_non_root(obj: dict) -> None:
    """Every container KubeRay runs for this object (Ray head and workers, the autoscaler sidecar, a
    RayJob's submitter) runs as the image's ray user, never root, without privilege escalation or
    capabilities, under the runtime's default seccomp profile."""
    spec = cluster_specs(obj)
    templates = {"head": spec["headGroupSpec"]["template"]}
    templates.update({g["groupName"]: g["template"] for g in spec["workerGroupSpecs"]})
    if obj["kind"] == "RayJob":
        templates["submitter"] = obj["spec"]["submitterPodTemplate"]
    containers = [(f"{pod}/{c['name']}", c.get("securityContext", {}), t["spec"].get("securityContext", {}))
                  for pod, t in templates.items() for c in t["spec"]["containers"] + t["spec"].get("initContainers", [])]
    if spec.get("enableInTreeAutoscaling"):  # KubeRay adds it to the head Pod with autoscalerOptions' securityContext
        containers.append(("head/autoscaler", spec.get("autoscalerOptions", {}).get("securityContext", {}),
                           templates["head"]["spec"].get("securityContext", {})))
    for where, sc, pod_sc in containers:
        effective = {k: sc.get(k, pod_sc.get(k)) for k in ("runAsNonRoot", "runAsUser", "seccompProfile")}
        assert effective["runAsNonRoot"] is True, f"{where}: may run as root"
        assert effective["runAsUser"] == RAY_USER, f"{where}: runs as uid {effective['runAsUser']}"
        assert (effective["seccompProfile"] or {}).get("type") == "RuntimeDefault", f"{where}: no seccomp profile"
        assert sc.get("allowPrivilegeEscalation") is False and not sc.get("privileged"), f"{where}: may escalate"
        caps = sc.get("capabilities", {})
        assert "ALL" in caps.get("drop", []) and not caps.get("add"), f"{where}: keeps Linux capabilities"


@pytest.mark.parametrize("name", KUBERAY_FILES)
def test_kuberay_only_the_clusters_pods_the_submitter_and_the_operator_reach_the_ray_pods(name):
    policies = network_policies()
    assert len(policies) == 1
    for obj in ray_objects(name):
        check_network_policy(policies, obj)


@pytest.mark.parametrize("name", KUBERAY_FILES)
def test_kuberay_every_container_runs_as_the_ray_user_without_privileges(name):
    for obj in ray_objects(name):
        check_non_root(obj)


@needs_crds
def test_network_policy_validates_against_the_kubernetes_schema_in_kuberays_crd():
    """KubeRay's CRD embeds Kubernetes' NetworkPolicyIngressRule and LabelSelector schemas: the policy's
    rules and selector validate strictly against them (a misspelled key is an error)."""
    rules = crd_schema("RayCluster")["properties"]["spec"]["properties"]["networkPolicy"]["properties"]["head"]["properties"]["ingressRules"]
    selector = rules["items"]["properties"]["from"]["items"]["properties"]["podSelector"]
    (policy,) = network_policies()
    jsonschema.validate(policy["spec"]["ingress"], rules)
    jsonschema.validate(policy["spec"]["podSelector"], selector)
    broken = copy.deepcopy(policy["spec"]["ingress"])
    broken[0]["form"] = broken[0].pop("from")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, rules)


NETWORK_BREAKAGES = ["policy_removed", "policy_selects_no_ray_pod", "rule_from_everyone", "rule_from_any_address",
                     "rule_from_every_pod", "operator_any_namespace", "submitter_any_port", "submitter_unlabelled"]
SECURITY_BREAKAGES = ["root_user", "run_as_non_root_removed", "privilege_escalation", "capabilities_kept",
                      "autoscaler_unrestricted", "no_seccomp", "submitter_root"]


SUBMITTER_BREAKAGES = ("submitter_unlabelled", "submitter_root")  # only a RayJob has a submitter of its own


@pytest.mark.parametrize("name,breakage", [
    (name, breakage) for name in KUBERAY_FILES for breakage in NETWORK_BREAKAGES + SECURITY_BREAKAGES
    if breakage not in SUBMITTER_BREAKAGES or ray_objects(name)[0]["kind"] == "RayJob"])
def test_kuberay_closed_checks_refuse_a_broken_copy(name, breakage):
    obj = copy.deepcopy(ray_objects(name)[0])
    policies = copy.deepcopy(network_policies())
    spec = cluster_specs(obj)
    head, worker = spec["headGroupSpec"]["template"], spec["workerGroupSpecs"][0]["template"]
    ingress = policies[0]["spec"]["ingress"]
    if breakage == "policy_removed":
        policies = []
    elif breakage == "policy_selects_no_ray_pod":
        head["metadata"]["labels"] = {}
    elif breakage == "rule_from_everyone":
        ingress.append({"ports": [{"protocol": "TCP", "port": 8000}]})
    elif breakage == "rule_from_any_address":
        ingress.append({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})
    elif breakage == "rule_from_every_pod":
        ingress.append({"from": [{"podSelector": {}}]})
    elif breakage == "operator_any_namespace":
        next(p for r in ingress for p in r["from"] if "namespaceSelector" in p)["namespaceSelector"] = {}
    elif breakage == "submitter_any_port":
        next(r for r in ingress if "ports" in r).pop("ports")
    elif breakage == "root_user":
        worker["spec"]["containers"][0]["securityContext"] = {**worker["spec"]["containers"][0]["securityContext"], "runAsUser": 0}
    elif breakage == "run_as_non_root_removed":  # from the pod and its container: nothing says non-root any more
        worker["spec"]["securityContext"] = {k: v for k, v in worker["spec"]["securityContext"].items() if k != "runAsNonRoot"}
        c = worker["spec"]["containers"][0]
        c["securityContext"] = {k: v for k, v in c["securityContext"].items() if k != "runAsNonRoot"}
    elif breakage == "privilege_escalation":
        c = head["spec"]["containers"][0]
        c["securityContext"] = {**c["securityContext"], "allowPrivilegeEscalation": True}
    elif breakage == "capabilities_kept":
        c = head["spec"]["containers"][0]
        c["securityContext"] = {**c["securityContext"], "capabilities": {"drop": [], "add": ["NET_ADMIN"]}}
    elif breakage == "autoscaler_unrestricted":
        spec["autoscalerOptions"].pop("securityContext")
    elif breakage == "no_seccomp":
        head["spec"]["securityContext"] = {k: v for k, v in head["spec"]["securityContext"].items() if k != "seccompProfile"}
        c = head["spec"]["containers"][0]
        c["securityContext"] = {k: v for k, v in c["securityContext"].items() if k != "seccompProfile"}
    elif breakage == "submitter_unlabelled":
        obj["spec"]["submitterPodTemplate"]["metadata"]["labels"] = {}
    else:  # submitter_root
        obj["spec"]["submitterPodTemplate"]["spec"]["containers"][0].pop("securityContext")
    check = (lambda: check_network_policy(policies, obj)) if breakage in NETWORK_BREAKAGES else (lambda: check_non_root(obj))
    with pytest.raises(AssertionError):
        check()


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
    assert modal_app.STAGES == ["sft", "evaluate", "sample"]
    assert set(modal_app.JOB_ARGS) == {"pipeline", *modal_app.STAGES} == set(modal_app.FUNCTIONS) == set(modal_app.JOB_GPUS)
    for job in modal_app.JOB_ARGS:
        assert isinstance(modal_app.FUNCTIONS[job], modal.Function)
    assert callable(modal_app.launch_all)


def test_modal_launch_all_makes_every_input_of_tables_1_to_3_and_the_report(modal_app):
    """launch_all runs the pipeline; parsed with the pipeline's own parser, its settings make both models'
    SFT, Table 1 (four models on the three test sets), Tables 2-3 (base and SFT samples scored by the
    reward model) and the report, and every stage fits the container's GPUs."""
    from ray_app.config import BatchPlan, resolve_section

    launcher = (CLUSTER / "modal_app.py").read_text()
    assert "study.remote()" in launcher.split("def launch_all")[1]
    cmd = modal_app.job_command("pipeline")
    pcfg, args = parse_with_job_parser("pipeline", cmd[2:])
    assert (args.storage_root, args.preset) == (modal_app.OUTPUTS, modal_app.PRESET)
    assert (pcfg.small_model, pcfg.large_model) == ("gemma-3-1b-it", "gemma-3-4b-it")
    sections = {s: resolve_section(s, args.preset, None, {}) for s in ("sft", "eval", "sample")}
    gpus = int(modal_app.JOB_GPUS["pipeline"].split(":")[1])
    # Both SFT runs on the container's GPUs (the pipeline's large-model overrides included).
    for per_device in (pcfg.per_device_batch_size or sections["sft"].per_device_batch_size, pcfg.large_per_device_batch_size):
        plan = BatchPlan(per_device, 1, sections["sft"].nproc_per_node, sections["sft"].nnodes)
        assert plan.world_size <= gpus and sections["sft"].use_gpu
    assert set(sections["eval"].datasets.split(",")) == {"gsm_symbolic_test", "gsm8k_same_templates", "gsm8k_non_overlapping"}
    assert sections["eval"].actors_per_model * 1 <= gpus
    # Sampling: one reward replica and the generation actors fit at once; the reward model is the real one.
    assert sections["sample"].reward_num_gpus * sections["sample"].reward_replicas + sections["sample"].actors_per_model <= gpus
    assert sections["sample"].reward_model == "skywork-reward-v2-llama-3.1-8b" and sections["sample"].num_samples >= 8
    # The pipeline evaluates the four models and samples base and SFT (its code names them; the tiny run's
    # report in tests/test_pipeline.py shows each table made from them).
    source = (ROOT / "jobs" / "pipeline.py").read_text()
    for label in ("small-base", "small-sft", "large-base", "large-sft"):
        assert f'"{label}"' in source
    assert 'models=f"small-base={labels[\'small-base\']},small-sft={labels[\'small-sft\']}"' in source
    assert "write_report(" in source and "write_html_report(" in source


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
