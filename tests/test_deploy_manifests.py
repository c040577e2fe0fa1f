"""The Kubernetes manifests and the `ray up` config under docker/, checked without a cluster.

- Core objects (ConfigMap, StatefulSet, Deployment, Service, NetworkPolicy, PVC) against the
  Kubernetes OpenAPI schemas that the ``kubernetes-validate`` package ships, in strict mode
  (unknown fields are errors), for the oldest and the newest Kubernetes version checked here.
- KubeRay objects (RayCluster, RayJob) against the ``openAPIV3Schema`` of KubeRay's CRDs
  (vendored in tests/schemas/, see the README there). An API server prunes unknown fields of a
  structural schema instead of rejecting them, and so does a plain JSON-schema validation; so
  every key of a manifest is also walked against the schema's ``properties``: a typo fails.
  Their ``metadata`` is checked against Kubernetes' ObjectMeta.
- What the manifests promise: no literal secrets (Secret references, each created by a command
  in docker/README.md), ClusterIP services only, non-root pods, MLflow on PostgreSQL with S3
  artifacts at the pinned MLflow version, the RayCluster's token auth, autoscaling and
  multi-GPU group, and a RayJob that runs a study on that cluster.
- ``docker/ray-cluster.yaml`` against the cluster-launcher schema of the installed Ray.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the manifests")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is needed for schema checks")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="pip install kubernetes-validate (a dev dependency)"
)

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
# The oldest Kubernetes minor that managed clusters still commonly run, and the newest that
# kubernetes-validate ships schemas for.
K8S_VERSIONS = ("1.33", "1.37")
NOT_KUBERNETES = {"compose.yaml": "docker compose file", "ray-cluster.yaml": "`ray up` config"}
SECRET_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|KEY_ID$")


def manifest_files() -> list[Path]:
    return sorted(p for p in DOCKER.glob("*.yaml") if p.name not in NOT_KUBERNETES)


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@functools.lru_cache(maxsize=1)
def all_docs() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, object) of every manifest; shared: tests deep-copy before they change one."""
    return tuple((p.name, d) for p in manifest_files() for d in load_docs(p))


def doc_id(item: tuple[str, dict[str, Any]]) -> str:
    name, doc = item
    return f"{name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


CORE = [item for item in all_docs() if not item[1]["apiVersion"].startswith("ray.io/")]
KUBERAY = [item for item in all_docs() if item[1]["apiVersion"].startswith("ray.io/")]


def find(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for _, d in all_docs() if d["kind"] == kind and name in (None, d["metadata"]["name"])
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def walk(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, (*path, i))


def pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec of an object: workload templates, KubeRay groups, a RayJob's submitter."""
    for path, node in walk(doc):
        if path and path[-1] == "spec" and isinstance(node, dict) and "containers" in node:
            yield "/".join(map(str, path)), node


# ---------------------------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------------------------


def test_every_yaml_under_docker_is_checked() -> None:
    names = {p.name for p in DOCKER.glob("*.yaml")}
    assert set(NOT_KUBERNETES) <= names
    for name, doc in all_docs():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{name}: not a Kubernetes object"
    kinds = {d["kind"] for _, d in all_docs()}
    assert {"RayCluster", "RayJob", "StatefulSet", "Deployment", "Service"} <= kinds
    ids = [doc_id(item) for item in all_docs()]
    assert len(ids) == len(set(ids)), "an object is defined twice"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("item", CORE, ids=doc_id)
def test_core_objects_match_the_kubernetes_schema(item: tuple[str, Any], version: str) -> None:
    kubernetes_validate.validate(item[1], version, strict=True)


def test_kubernetes_validation_rejects_a_broken_copy() -> None:
    deployment = copy.deepcopy(find("Deployment", "mlflow"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicty"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    service = copy.deepcopy(find("Service", "mlflow"))
    service["spec"]["ports"][0]["port"] = "five thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, K8S_VERSIONS[-1], strict=True)


def crd_schema(kind: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"kuberay-{kind.lower()}-v1.json").read_text())


def crd_validator(kind: str) -> Any:
    # OpenAPI v3 as JSON Schema: x-kubernetes-* and nullable are unknown keywords, ignored.
    return jsonschema.Draft202012Validator(crd_schema(kind))


def resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        schema = target
    return schema


def without_metadata(doc: dict[str, Any]) -> dict[str, Any]:
    """The object less its metadata: a bare object in a CRD schema, checked as ObjectMeta."""
    return {k: v for k, v in doc.items() if k != "metadata"}


def undeclared_keys(
    value: Any, schema: dict[str, Any], root: dict[str, Any], path: str = ""
) -> list[str]:
    """Paths of keys in ``value`` that ``schema`` does not declare (pruned by an API server)."""
    schema = resolve(schema, root)
    branches = [
        resolve(s, root) for key in ("allOf", "anyOf", "oneOf") for s in schema.get(key, [])
    ]
    out: list[str] = []
    if isinstance(value, dict):
        props: dict[str, Any] = dict(schema.get("properties", {}))
        for branch in branches:
            props.update(branch.get("properties", {}))
        extra = schema.get("additionalProperties")
        free = schema.get("x-kubernetes-preserve-unknown-fields") or extra is True
        for key, sub in value.items():
            where = f"{path}.{key}" if path else key
            if key in props:
                out += undeclared_keys(sub, props[key], root, where)
            elif isinstance(extra, dict):
                out += undeclared_keys(sub, extra, root, where)
            elif not free and (props or schema.get("type") == "object"):
                out.append(where)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            out += undeclared_keys(item, schema["items"], root, f"{path}[{i}]")
    return out


def object_meta_validator(version: str) -> Any:
    """Kubernetes' ObjectMeta (strict: unknown fields are errors), from kubernetes-validate."""
    files = resources.files("kubernetes_validate").joinpath("kubernetes-json-schema")
    folder = next(f for f in files.iterdir() if f.name == f"v{version}.0-local-strict")
    definitions = json.loads(folder.joinpath("_definitions.json").read_text())
    schema = {  # refs inside are /api/_definitions.json#/$defs/...: resolved against this $id
        "$id": definitions["$id"],
        "$defs": definitions["$defs"],
        "$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
    }
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("item", KUBERAY, ids=doc_id)
def test_kuberay_objects_match_the_crd_schema(item: tuple[str, Any]) -> None:
    _, doc = item
    assert doc["apiVersion"] == "ray.io/v1"
    schema = crd_schema(doc["kind"])
    errors = list(crd_validator(doc["kind"]).iter_errors(doc))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])
    # metadata is a bare object in a CRD schema: check it as Kubernetes does.
    object_meta_validator(K8S_VERSIONS[-1]).validate(doc["metadata"])
    assert undeclared_keys(without_metadata(doc), schema, schema) == []


def test_crd_checks_catch_typos_and_wrong_types() -> None:
    cluster = find("RayCluster")
    schema = crd_schema("RayCluster")
    validator = crd_validator("RayCluster")

    typo = copy.deepcopy(cluster)
    typo["spec"]["enableInTreeAutoscalling"] = True  # pruned by the API server: silently off
    typo["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resource"] = {}
    assert validator.is_valid(typo), "the CRD schema alone lets unknown fields through"
    assert sorted(undeclared_keys(without_metadata(typo), schema, schema)) == [
        "spec.enableInTreeAutoscalling",
        "spec.workerGroupSpecs[1].template.spec.containers[0].resource",
    ]

    wrong = copy.deepcopy(cluster)
    wrong["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "eight"
    assert not validator.is_valid(wrong)
    wrong = copy.deepcopy(cluster)
    wrong["spec"]["authOptions"]["mode"] = "password"  # enum: disabled, token
    assert not validator.is_valid(wrong)
    job = copy.deepcopy(find("RayJob"))
    job["spec"]["submissionMode"] = 7
    assert not crd_validator("RayJob").is_valid(job)
    with pytest.raises(jsonschema.ValidationError):
        object_meta_validator(K8S_VERSIONS[-1]).validate({"name": "x", "lables": {}})


def test_vendored_crd_schemas_are_kuberay_v1() -> None:
    for kind in ("RayCluster", "RayJob"):
        schema = crd_schema(kind)
        assert "ray-project/kuberay" in schema["$comment"]
        assert schema["properties"]["kind"]["type"] == "string"
        spec = resolve(schema["properties"]["spec"], schema)
        assert "spec" in schema["properties"] and spec["type"] == "object"
    cluster_spec = crd_schema("RayCluster")["properties"]["spec"]["properties"]
    assert {"authOptions", "enableInTreeAutoscaling", "autoscalerOptions"} <= cluster_spec.keys()
    job_spec = crd_schema("RayJob")["properties"]["spec"]["properties"]
    assert {"entrypoint", "clusterSelector", "submitterPodTemplate"} <= job_spec.keys()


def test_ray_up_config_matches_rays_schema() -> None:
    ray = pytest.importorskip("ray", reason="the ray up schema ships with Ray")
    schema_file = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    if not schema_file.is_file():
        pytest.skip("this Ray has no autoscaler/ray-schema.json")
    schema = json.loads(schema_file.read_text())
    config = yaml.safe_load((DOCKER / "ray-cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    config["head_start_ray_comands"] = []
    assert not jsonschema.Draft7Validator(schema).is_valid(config)


# ---------------------------------------------------------------------------------------------
# What the manifests promise
# ---------------------------------------------------------------------------------------------


def pinned(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"constraints.txt does not pin {name}")


def readme_secrets() -> dict[str, set[str]]:
    """Secret name -> keys, from the `kubectl create secret generic` commands of the README."""
    text = (DOCKER / "README.md").read_text().replace("\\\n", " ")
    secrets: dict[str, set[str]] = {}
    for line in text.splitlines():
        m = re.search(r"kubectl create secret generic ([a-z0-9-]+)(.*)", line)
        if m:
            keys = set(re.findall(r"--from-literal=([A-Za-z0-9_.-]+)=", m.group(2)))
            secrets.setdefault(m.group(1), set()).update(keys)
    return secrets


def secret_refs() -> set[tuple[str, str]]:
    refs = set()
    for _, doc in all_docs():
        for _, node in walk(doc):
            if isinstance(node, dict) and "secretKeyRef" in node:
                refs.add((node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
    auth = find("RayCluster")["spec"]["authOptions"]
    refs.add((auth["secretName"], "auth_token"))  # KubeRay reads this key
    return refs


def test_no_literal_secrets_and_every_secret_is_created_in_the_readme() -> None:
    for name, doc in all_docs():
        assert doc["kind"] != "Secret", f"{name}: Secrets are created with kubectl, not committed"
        for path, node in walk(doc):
            is_env = isinstance(node, dict) and ("value" in node or "valueFrom" in node)
            if is_env and SECRET_ENV.search(str(node.get("name", ""))):
                assert "secretKeyRef" in node.get("valueFrom", {}), (
                    f"{name}: {node['name']} at {path} is not a Secret reference"
                )
    created = readme_secrets()
    refs = secret_refs()
    assert len(refs) >= 5
    for secret, key in sorted(refs):
        assert key in created.get(secret, set()), (
            f"Secret {secret} (key {key}) is used but docker/README.md does not create it"
        )


def test_services_stay_inside_the_cluster() -> None:
    for name, doc in all_docs():
        assert doc["kind"] not in ("Ingress", "Gateway", "HTTPRoute"), name
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", (
                f"{name}: {doc_id((name, doc))}"
            )
    assert find("RayCluster")["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"


def test_pods_run_as_non_root_without_service_account_tokens() -> None:
    seen = 0
    for name, doc in all_docs():
        for where, spec in pod_specs(doc):
            seen += 1
            ctx = spec.get("securityContext", {})
            assert ctx.get("runAsNonRoot") is True, f"{name} {where}: runAsNonRoot"
            assert ctx.get("runAsUser", 1) != 0, f"{name} {where}: runAsUser 0"
            assert spec.get("automountServiceAccountToken") is False, f"{name} {where}"
            for container in spec["containers"]:
                sc = container.get("securityContext", {})
                assert sc.get("allowPrivilegeEscalation") is False, f"{name} {container['name']}"
                assert not sc.get("privileged"), f"{name} {container['name']}"
    assert seen >= 7  # postgres, mlflow, seaweedfs, head, 2 worker groups, the submitter


def test_references_between_objects_resolve() -> None:
    defined = {(d["kind"], d["metadata"]["name"]) for _, d in all_docs()}
    for name, doc in all_docs():
        for _, node in walk(doc):
            if not isinstance(node, dict):
                continue
            if "configMapRef" in node:
                assert ("ConfigMap", node["configMapRef"]["name"]) in defined, name
            if "configMapKeyRef" in node:
                ref = node["configMapKeyRef"]
                assert ref["key"] in find("ConfigMap", ref["name"])["data"], f"{name}: {ref}"
            if "persistentVolumeClaim" in node:
                assert (
                    "PersistentVolumeClaim",
                    node["persistentVolumeClaim"]["claimName"],
                ) in defined
    services = {d["metadata"]["name"]: d for _, d in all_docs() if d["kind"] == "Service"}
    text = "\n".join(p.read_text() for p in manifest_files())
    for host, port in set(re.findall(r"(?:https?://|@)([a-z][a-z0-9-]*):(\d+)", text)):
        assert host in services, f"{host}:{port} is not a Service here"
        assert int(port) in [p["port"] for p in services[host]["spec"]["ports"]], f"{host}:{port}"
    for kind in ("StatefulSet",):
        for _, doc in all_docs():
            if doc["kind"] == kind:
                assert doc["spec"]["serviceName"] in services


def test_mlflow_runs_on_postgres_with_s3_artifacts() -> None:
    deployment = find("Deployment", "mlflow")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"ghcr.io/mlflow/mlflow:v{pinned('mlflow')}-full"
    script = container["args"][-1]
    argv = shlex.split(script.split("exec ", 1)[1].replace("\\\n", " "))
    assert argv[:2] == ["mlflow", "server"]
    uri = argv[argv.index("--backend-store-uri") + 1]
    assert uri.startswith("postgresql+psycopg2://") and "@postgres:5432/" in uri
    assert ":" not in uri.split("://", 1)[1].split("@", 1)[0], "a password in the URI"
    assert argv[argv.index("--artifacts-destination") + 1].startswith("s3://")
    assert "--serve-artifacts" in argv
    env = {e["name"]: e for e in container["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-postgres"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= env.keys()
    config = find("ConfigMap", "mlflow-config")["data"]
    assert {"MLFLOW_S3_ENDPOINT_URL", "MLFLOW_S3_BUCKET"} <= config.keys()
    assert [r["configMapRef"]["name"] for r in container["envFrom"]] == ["mlflow-config"]
    assert "sqlite" not in json.dumps(deployment), "no SQLite on a network volume any more"
    postgres = find("StatefulSet", "postgres")
    assert postgres["spec"]["volumeClaimTemplates"], "PostgreSQL keeps its data on a PVC"


def test_raycluster_auth_autoscaling_and_multi_gpu_workers() -> None:
    cluster = find("RayCluster")
    spec = cluster["spec"]
    assert spec["rayVersion"] == pinned("ray")
    ray_version = tuple(int(x) for x in spec["rayVersion"].split(".")[:2])
    assert ray_version >= (2, 52), "KubeRay's token auth needs Ray >= 2.52"
    assert spec["authOptions"] == {"mode": "token", "secretName": "occstudy-ray-auth"}
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    images = {c["image"] for _, s in pod_specs(cluster) for c in s["containers"]}
    assert len(images) == 1, "one image (one Ray, one Python) for the whole cluster"
    gpu_groups = []
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        requests = container["resources"].get("requests", {})
        if "nvidia.com/gpu" in limits:
            assert (
                requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"]) == limits["nvidia.com/gpu"]
            )
            gpu_groups.append(int(limits["nvidia.com/gpu"]))
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/shared", "/dev/shm"} <= mounts, group["groupName"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert gpu_groups and max(gpu_groups) > 1, "a worker group with several GPUs per pod"
    for _, pod in pod_specs(cluster):
        for container in pod["containers"]:
            names = {e["name"] for e in container.get("env", [])}
            assert not names & {"RAY_AUTH_TOKEN", "RAY_AUTH_MODE"}, "authOptions sets these"


def test_rayjob_runs_a_study_on_the_cluster() -> None:
    job = find("RayJob")
    cluster = find("RayCluster")
    spec = job["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    # KubeRay's rules for clusterSelector mode.
    assert "rayClusterSpec" not in spec and not spec.get("shutdownAfterJobFinishes")
    assert not spec.get("suspend") and not spec.get("backoffLimit")
    assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["occstudy", "run"]
    study = argv[2]
    assert study.startswith("/home/ray/studies/"), "studies are in the image under /home/ray"
    assert (ROOT / "studies" / study.rsplit("/", 1)[1]).is_file(), study
    gpu_dockerfile = (DOCKER / "Dockerfile.gpu").read_text()
    assert "WORKDIR /home/ray" in gpu_dockerfile and "studies ./studies" in gpu_dockerfile
    opts = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert opts["--address"] == "auto"
    assert opts["--tracking-uri"] == "http://mlflow:5000"
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    mounts = [m["mountPath"] for m in head["volumeMounts"]]
    assert any(opts["--storage"].startswith(m + "/") for m in mounts), "storage on a shared volume"
    submitter = spec["submitterPodTemplate"]["spec"]["containers"][0]
    assert submitter["image"] == head["image"], "the submitter runs the cluster's Ray"
