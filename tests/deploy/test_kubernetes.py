"""deploy/kubernetes: the Kustomize base and the production overlay, checked without a cluster.

`kubectl kustomize` renders both (kubectl must be installed: scripts/test installs Debian's
kubernetes-client when it is missing; these tests fail, never skip, without it). Every built-in
object is validated offline against the Kubernetes OpenAPI schemas that the kubernetes-validate
package ships (strict: an unknown field is an error), the KEDA objects against the fields of
KEDA's CRDs, and the manifests against what the code says: the Procfile's commands and queues,
every setting of core/config.py, the job timeouts, the health routes.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

try:
    from core.config import Settings
except ImportError:  # the settings lived in jobs/config.py before the layers moved
    from jobs.config import Settings  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
TARGETS = {"base": KUBE / "base", "production": KUBE / "overlays" / "production"}
# The oldest Kubernetes these manifests claim (policy/v1, autoscaling/v2, KEDA >= 2.12 all
# predate it) and the newest the pinned kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
NAMESPACE = "image-queue"

# Settings kept in the Secret; all the others are in the ConfigMap (base/config.env).
SECRET_SETTINGS = {"REDIS_URL", "DATABASE_URL", "CLOUDINARY_URL", "RATE_LIMIT_STORAGE_URL", "SECRET_KEY",
                   "ADMIN_PASSWORD", "METRICS_TOKEN", "SENTRY_DSN"}
# ConfigMap values that differ from the code's defaults on purpose (paths in the image, the
# rembg Service, JSON logs); every other value must equal the default, so that a changed
# default in core/config.py is not silently pinned to the old one here.
DEPLOYMENT_VALUES = {"STORAGE_DIR", "UPLOAD_DIR", "PUBLIC_BASE_URL", "REMBG_URLS", "LOG_FORMAT"}
# Pods that run the app image with the settings (the Procfile's processes; "release" is the migrate Job).
APP_COMPONENTS = {"web", "reconciler", "cleanup", "migrate", "worker-face-crop", "worker-background-removal",
                  "worker-image-processing", "worker-face-detection", "worker-batch-ingestion", "worker-webhooks"}
# The uploads volume (UPLOAD_DIR): web streams ZIPs to it, ingestion extracts, face-detection
# reads, the reconciler looks for unfinished uploads, cleanup deletes old batches' leftovers.
UPLOADS_COMPONENTS = {"web", "worker-batch-ingestion", "worker-face-detection", "reconciler", "cleanup"}
# Procfile lines that run once per deploy (a release phase), as a Job; every other line is a
# long-running process with its Deployment.
RELEASE_PROCESSES = {"release"}
# The RQ timeout of a ZIP ingestion (core/batch_plan.py) is a 24 h runaway ceiling, not a
# duration: an ingest cut short resumes after the last image it wrote (jobs/batch.py). Its
# grace period covers a whole 1.1 M-entry ingest at 300 entries/s instead.
INGEST_GRACE_S = 3600

# `rq worker` options that take a value (the rest of the Procfile's options are flags).
RQ_VALUE_OPTIONS = {"-c", "--config", "-w", "--worker-class", "--worker-ttl", "--maintenance-interval", "-u",
                    "--url", "-n", "--name", "--results-ttl", "--job-class", "--queue-class", "-S", "--serializer",
                    "--job-monitoring-interval", "--logging_level", "--log-format", "--date-format"}
RQ_FLAGS = {"--with-scheduler", "--burst", "-b", "--quiet", "-q", "--verbose", "-v"}

# --- KEDA: the fields of its CRDs (keda.sh_scaledobjects.yaml, keda.sh_triggerauthentications.yaml
# of KEDA 2.12-2.20, v1alpha1). The API server would silently drop an unknown field of a custom
# resource; here it is an error.
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_INT = {"type": "integer"}
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object", "additionalProperties": False, "required": ["name"],
                    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "name": {"type": "string"}, "envSourceContainerName": {"type": "string"}},
                },
                "pollingInterval": _INT, "cooldownPeriod": _INT, "initialCooldownPeriod": _INT,
                "idleReplicaCount": _INT, "minReplicaCount": _INT, "maxReplicaCount": _INT,
                "fallback": {
                    "type": "object", "additionalProperties": False, "required": ["failureThreshold", "replicas"],
                    "properties": {"failureThreshold": _INT, "replicas": _INT, "behavior": {"type": "string"}},
                },
                "advanced": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object", "additionalProperties": False,
                            "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                        },
                        "scalingModifiers": {
                            "type": "object", "additionalProperties": False,
                            "properties": {"formula": {"type": "string"}, "target": {"type": "string"},
                                           "activationTarget": {"type": "string"},
                                           "metricType": {"enum": ["AverageValue", "Value", "Utilization"]}},
                        },
                    },
                },
                "triggers": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "additionalProperties": False, "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"}, "name": {"type": "string"}, "metadata": _STRING_MAP,
                            "useCachedMetrics": {"type": "boolean"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "authenticationRef": {
                                "type": "object", "additionalProperties": False, "required": ["name"],
                                "properties": {"name": {"type": "string"},
                                               "kind": {"enum": ["TriggerAuthentication",
                                                                 "ClusterTriggerAuthentication"]}},
                            },
                        },
                    },
                },
            },
        },
    },
}
TRIGGER_AUTHENTICATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object", "additionalProperties": False,
            # Only the secret and env sources are used here; the others are left unchecked.
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "items": {"type": "object", "additionalProperties": False,
                              "required": ["parameter", "name", "key"],
                              "properties": {"parameter": {"type": "string"}, "name": {"type": "string"},
                                             "key": {"type": "string"}}},
                },
                "env": {"type": "array"}, "configMapTargetRef": {"type": "array"}, "podIdentity": {"type": "object"},
                "hashiCorpVault": {"type": "object"}, "azureKeyVault": {"type": "object"},
                "awsSecretManager": {"type": "object"}, "gcpSecretManager": {"type": "object"},
                "filePath": {"type": "object"}, "boundServiceAccountToken": {"type": "array"},
                "oauth2": {"type": "object"},
            },
        },
    },
}
# Trigger metadata each scaler reads (KEDA's pkg/scalers/*_scaler.go), and what it requires.
TRIGGER_METADATA = {
    "redis": ({"listName", "listLength", "activationListLength", "databaseIndex", "enableTLS", "unsafeSsl",
               "address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv", "username",
               "usernameFromEnv", "passwordFromEnv"}, {"listName", "listLength"}),
    "kubernetes-workload": ({"podSelector", "value", "activationValue", "groupByNode"}, {"podSelector", "value"}),
}
REDIS_AUTH_PARAMETERS = {"address", "host", "port", "username", "password", "tls", "ca", "cert", "key", "keyPassword"}


# --- rendering ----------------------------------------------------------------------------------
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl is not installed: it renders deploy/kubernetes (`kubectl kustomize`). "
                    "scripts/test installs Debian's kubernetes-client; or install kubectl >= 1.21.", pytrace=False)
    return path


@cache
def _kubectl_checked() -> str:
    path = kubectl()
    out = subprocess.run([path, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        pytest.fail(f"`kubectl version --client` failed: {out.stderr.strip()}", pytrace=False)
    version = json.loads(out.stdout)
    minor = int(re.match(r"\d+", version["clientVersion"]["minor"]).group())  # type: ignore[union-attr]
    if int(version["clientVersion"]["major"]) == 1 and minor < 21:
        pytest.fail(f"kubectl {version['clientVersion']['gitVersion']} bundles kustomize v2, which cannot build "
                    "these kustomizations (directories in resources, patches); install kubectl >= 1.21",
                    pytrace=False)
    return path


@cache
def _render(directory: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run([_kubectl_checked(), "kustomize", directory], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory} failed:\n{out.stderr}", pytrace=False)
    return tuple(yaml.safe_load_all(out.stdout))


def render(target: str) -> list[dict[str, Any]]:
    return list(_render(str(TARGETS[target])))


def objects(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def component(doc: dict[str, Any]) -> str:
    return str(doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"])


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


def configmap(docs: list[dict[str, Any]]) -> dict[str, str]:
    (only,) = [doc for doc in docs if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith(
        "image-queue-config")]
    return only["data"]


def env_file(path: Path) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return {key: value for key, value in pairs}


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def rq_queues(argv: list[str]) -> list[str]:
    """The queue names of an `rq worker ...` command line, its options stepped over."""
    assert argv[:2] == ["rq", "worker"], argv
    queues, rest = [], iter(argv[2:])
    for arg in rest:
        if arg in RQ_VALUE_OPTIONS:
            next(rest)
        elif arg.startswith("-"):
            assert arg in RQ_FLAGS, f"unknown rq worker option {arg}: teach this test whether it takes a value"
        else:
            queues.append(arg)
    return queues


def worker_deployments(docs: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """Procfile process -> (its Deployment, the queues it listens to), for the rq workers."""
    by_process = {d["metadata"].get("annotations", {}).get("image-queue/procfile"): d
                  for d in objects(docs, "Deployment").values()}
    found = {}
    for name, command in procfile().items():
        argv = shlex.split(command)
        if argv[:2] == ["rq", "worker"]:
            found[name] = (by_process[name], rq_queues(argv))
    return found


def settings_of(docs: list[dict[str, Any]]) -> Any:
    """The settings the pods run with: the code's defaults overridden by the ConfigMap."""
    return Settings.from_env(configmap(docs))


CPU = re.compile(r"^(\d+(\.\d+)?)(m?)$")
MEMORY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
          "Ti": 2**40}


def cpu_cores(value: str | int) -> float:
    match = CPU.match(str(value))
    assert match, f"not a CPU quantity: {value!r}"
    return float(match.group(1)) / (1000 if match.group(3) else 1)


def memory_bytes(value: str | int) -> int:
    match = MEMORY.match(str(value))
    assert match, f"not a memory quantity: {value!r}"
    return int(match.group(1)) * _UNITS[match.group(2)]


# --- render and schemas -----------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_renders_with_no_duplicate_names(target: str) -> None:
    docs = render(target)
    assert len(docs) > 20
    seen: set[tuple[str, str, str, str]] = set()
    for doc in docs:
        assert doc and {"apiVersion", "kind", "metadata"} <= doc.keys(), f"an empty or bare document: {doc!r}"
        group = doc["apiVersion"].rsplit("/", 1)[0] if "/" in doc["apiVersion"] else ""
        key = (group, doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])
        assert key not in seen, f"{key} twice"
        seen.add(key)
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, key


@pytest.mark.parametrize("target", TARGETS)
def test_builtin_objects_validate_against_the_kubernetes_schemas(target: str) -> None:
    errors = []
    checked = 0
    for doc in render(target):
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): "
                              f"{'.'.join(map(str, exc.path))}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                errors.append(exc.message)
        checked += 1
    assert errors == []
    assert checked > 20


@pytest.mark.parametrize("target", TARGETS)
def test_keda_objects_match_their_crd_fields(target: str) -> None:
    docs = render(target)
    deployments = objects(docs, "Deployment")
    auths = objects(docs, "TriggerAuthentication")
    scaled = objects(docs, "ScaledObject")
    assert auths and scaled
    for name, auth in auths.items():
        jsonschema.validate(auth, TRIGGER_AUTHENTICATION_SCHEMA)
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["parameter"] in REDIS_AUTH_PARAMETERS, (name, ref)
    for name, obj in scaled.items():
        jsonschema.validate(obj, SCALED_OBJECT_SCHEMA)
        spec = obj["spec"]
        target_ref = spec["scaleTargetRef"]
        assert target_ref.get("kind", "Deployment") == "Deployment" and target_ref["name"] in deployments, name
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], name
        assert spec["pollingInterval"] > 0 and spec["cooldownPeriod"] > 0, name
        for trigger in spec["triggers"]:
            allowed, required = TRIGGER_METADATA[trigger["type"]]
            keys = set(trigger["metadata"])
            assert required <= keys <= allowed, (name, trigger)
            if trigger["type"] == "redis":
                assert int(trigger["metadata"]["listLength"]) >= 1, (name, trigger)
                assert trigger["authenticationRef"]["name"] in auths, (name, trigger)
            else:
                assert float(trigger["metadata"]["value"]) > 0, (name, trigger)
        modifiers = spec.get("advanced", {}).get("scalingModifiers")
        if modifiers:  # KEDA needs every trigger named; the formula may only use those names
            names = {trigger.get("name") for trigger in spec["triggers"]}
            assert None not in names, name
            assert set(re.findall(r"[A-Za-z_]\w*", modifiers["formula"])) <= names, name
            assert float(modifiers["target"]) > 0, name
        # The HPA that KEDA creates gets this behaviour: validate it as one.
        behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
        if behavior is not None:
            hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": name},
                   "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                            "minReplicas": spec["minReplicaCount"], "maxReplicas": spec["maxReplicaCount"],
                            "behavior": behavior}}
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(hpa, version, strict=True)


def test_the_crd_field_check_catches_mistakes() -> None:
    """A typo, a number where KEDA wants a string, a trigger without metadata: all refused."""
    good = objects(render("base"), "ScaledObject")["worker-face-crop"]
    jsonschema.validate(good, SCALED_OBJECT_SCHEMA)
    typo = json.loads(json.dumps(good))
    typo["spec"]["minReplicas"] = typo["spec"].pop("minReplicaCount")
    number = json.loads(json.dumps(good))
    number["spec"]["triggers"][0]["metadata"]["listLength"] = 20
    bare = json.loads(json.dumps(good))
    del bare["spec"]["triggers"][0]["metadata"]
    for broken in (typo, number, bare):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, SCALED_OBJECT_SCHEMA)


# --- what the code says ---------------------------------------------------------------------------
def _by_procfile_line(workloads: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {d["metadata"].get("annotations", {}).get("image-queue/procfile"): d for d in workloads.values()}
    found.pop(None, None)
    return found


@pytest.mark.parametrize("target", TARGETS)
def test_every_procfile_process_has_a_deployment_running_its_command(target: str) -> None:
    docs = render(target)
    deployments = _by_procfile_line(objects(docs, "Deployment"))
    jobs = _by_procfile_line(objects(docs, "Job"))
    processes = procfile()
    assert RELEASE_PROCESSES <= set(processes), "the Procfile's release phase (the migration) is gone"
    assert set(deployments) == set(processes) - RELEASE_PROCESSES, \
        "one Deployment per Procfile line but the release phase, no more, no less"
    assert set(jobs) == RELEASE_PROCESSES, "the release phase is a Job (once per deploy), not a Deployment"
    assert jobs["release"]["metadata"]["name"] == "migrate"
    assert pod_spec(jobs["release"])["restartPolicy"] != "Always"
    for name, command in processes.items():
        (container,) = pod_spec({**deployments, **jobs}[name])["containers"]
        assert container["command"] == shlex.split(command), name
        assert "args" not in container, name


@pytest.mark.parametrize("target", TARGETS)
def test_every_queue_a_worker_listens_to_is_in_its_scaler(target: str) -> None:
    docs = render(target)
    scaled = {obj["spec"]["scaleTargetRef"]["name"]: obj for obj in objects(docs, "ScaledObject").values()}
    redis_db = "0"
    if target == "base":  # the trial Secret's REDIS_URL; production's is created outside the manifests
        secret = objects(docs, "Secret")["image-queue-secrets"]["stringData"]
        redis_db = secret["REDIS_URL"].rsplit("/", 1)[1]
    workers = worker_deployments(docs)
    assert {"face_crop", "background_removal", "image_processing", "face_detection", "batch_ingestion",
            "webhooks"} <= set(workers)
    for process, (deployment, queues) in workers.items():
        obj = scaled.get(deployment["metadata"]["name"])
        assert obj is not None, f"{process}: no ScaledObject"
        lists = {t["metadata"]["listName"]: t for t in obj["spec"]["triggers"] if t["type"] == "redis"}
        assert set(lists) == {f"rq:queue:{queue}" for queue in queues}, process
        assert {t["metadata"].get("databaseIndex", "0") for t in lists.values()} == {redis_db}, process
        assert obj["spec"]["minReplicaCount"] >= 1, f"{process}: scheduled retries need a running worker"
        modifiers = obj["spec"].get("advanced", {}).get("scalingModifiers")
        if len(queues) == 10:  # the face-detection priorities: scaled on their sum
            assert modifiers, process
            terms = [term.strip() for term in modifiers["formula"].split("+")]
            assert sorted(terms) == sorted(t["name"] for t in lists.values()), "the sum of all ten lists"


@pytest.mark.parametrize("target", TARGETS)
def test_rembg_servers_scale_with_the_background_removal_workers(target: str) -> None:
    docs = render(target)
    obj = objects(docs, "ScaledObject")["rembg"]
    assert obj["spec"]["scaleTargetRef"]["name"] == "rembg"
    triggers = obj["spec"]["triggers"]
    assert "rq:queue:background-removal" in {t["metadata"].get("listName") for t in triggers}
    (workload,) = [t for t in triggers if t["type"] == "kubernetes-workload"]
    selector = workload["metadata"]["podSelector"]
    match = re.fullmatch(r"app\.kubernetes\.io/component in \(([^)]*)\)", selector)
    assert match, selector
    selected = {name.strip() for name in match.group(1).split(",")}
    workers = worker_deployments(docs)
    for process in ("background_removal", "image_processing"):  # both call rembg
        assert component(workers[process][0]) in selected
    # The workers reach the servers through the rembg Service.
    service = objects(docs, "Service")["rembg"]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "rembg"
    port = service["spec"]["ports"][0]["port"]
    assert settings_of(docs).rembg_urls == (f"http://rembg:{port}",)
    (container,) = pod_spec(objects(docs, "Deployment")["rembg"])["containers"]
    assert container["command"][:2] == ["rembg", "s"] and "--no-ui" in container["command"]


@pytest.mark.parametrize("target", TARGETS)
def test_rembg_servers_run_as_compose_runs_them(target: str) -> None:
    """One onnxruntime thread per request, compose's two requests at once (docs/background.md),
    and a CPU request of one core per request in flight."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    compose_rembg = compose["services"]["rembg-1"]
    compose_threads = int(re.fullmatch(r"\$\{REMBG_SERVER_CONCURRENCY:-(\d+)\}",
                                       compose_rembg["command"][-1]).group(1))  # type: ignore[union-attr]
    assert compose_rembg["command"][-2] == "--threads"
    (container,) = pod_spec(objects(render(target), "Deployment")["rembg"])["containers"]
    command = container["command"]
    threads = int(command[command.index("--threads") + 1])
    env = {item["name"]: item["value"] for item in container["env"]}
    assert threads == compose_threads
    assert env["OMP_NUM_THREADS"] == str(compose_rembg["environment"]["OMP_NUM_THREADS"]) == "1"
    assert cpu_cores(container["resources"]["requests"]["cpu"]) == threads * int(env["OMP_NUM_THREADS"])


@pytest.mark.parametrize("target", TARGETS)
def test_workers_liveness_is_the_worker_alive_check_and_cheap(target: str) -> None:
    """compose's healthcheck of the workers, as an exec probe: not more often than once a minute
    (it starts Python and reads every registered worker from Redis), after the worker has had
    time to register, with a timeout above the check's own Redis timeouts."""
    from ops import worker_alive

    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    compose_test = compose["services"]["worker-face-crop"]["healthcheck"]["test"]
    assert compose_test[0] == "CMD"
    for process, (deployment, _queues) in worker_deployments(render(target)).items():
        (container,) = pod_spec(deployment)["containers"]
        probe = container["livenessProbe"]
        assert probe["exec"]["command"] == compose_test[1:] == ["python", "-m", "ops.worker_alive"], process
        assert probe["periodSeconds"] >= 60, process
        assert probe["timeoutSeconds"] > worker_alive.TIMEOUT_S, process
        assert probe["initialDelaySeconds"] >= 30 or "startupProbe" in container, process
        assert probe.get("failureThreshold", 3) >= 2, process
        assert "readinessProbe" not in container, process


@pytest.mark.parametrize("target", TARGETS)
def test_grace_period_lets_the_running_job_finish(target: str) -> None:
    docs = render(target)
    settings = settings_of(docs)
    timeouts = {queue: settings.job_timeout_s for queue in ("face-crop", "background-removal", "image-processing")}
    timeouts |= {f"face-detection-{p}": settings.batch_chunk_timeout_s for p in range(1, 11)}
    timeouts["webhooks"] = 2 * settings.webhook_timeout_s + 10  # a delivery job's timeout (core/webhook_events.py)
    for process, (deployment, queues) in worker_deployments(docs).items():
        grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
        if queues == ["batch-ingestion"]:
            assert grace >= INGEST_GRACE_S > settings.job_timeout_s, process
            continue
        longest = max(timeouts[queue] for queue in queues)
        assert grace > longest, f"{process}: grace {grace} s <= job timeout {longest} s"
    # web: the preStop sleep, then Gunicorn's graceful_timeout for requests in flight.
    web = pod_spec(objects(docs, "Deployment")["web"])
    graceful = int(re.search(r"^graceful_timeout = (\d+)", (ROOT / "service" / "gunicorn.conf.py").read_text(),
                             re.M).group(1))  # type: ignore[union-attr]
    sleep = int(web["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert web["terminationGracePeriodSeconds"] > sleep + graceful


@pytest.mark.parametrize("target", TARGETS)
def test_web_probes_deep_for_readiness_and_cheap_for_liveness(target: str) -> None:
    (container,) = pod_spec(objects(render(target), "Deployment")["web"])["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/worker/health"
    assert container["livenessProbe"]["httpGet"]["path"] != "/api/worker/health"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["GUNICORN_BIND"] == f"0.0.0.0:{ports['http']}"


def test_the_liveness_route_answers_with_redis_and_the_database_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """Liveness must not restart the API because a backend is down: its route answers from the
    process alone (the readiness route answers 503 meanwhile)."""
    from service import create_app

    (container,) = pod_spec(objects(render("base"), "Deployment")["web"])["containers"]
    path = container["livenessProbe"]["httpGet"]["path"]
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:9/0")  # discard port: refused
    monkeypatch.setenv("DATABASE_URL", "mysql://nobody:x@127.0.0.1:9/none")
    client = create_app().test_client()
    assert client.get(path).status_code == 200
    assert client.get(container["readinessProbe"]["httpGet"]["path"]).status_code == 503


@pytest.mark.parametrize("target", TARGETS)
def test_configmap_and_secret_name_every_setting(target: str) -> None:
    docs = render(target)
    names = {f.name.upper() for f in fields(Settings)}
    config = configmap(docs)
    if target == "base":
        secret = objects(docs, "Secret")["image-queue-secrets"]["stringData"]
    else:  # created outside the manifests, from this example
        assert "image-queue-secrets" not in objects(docs, "Secret")
        secret = env_file(TARGETS[target] / "secrets.env.example")
    assert set(secret) == SECRET_SETTINGS
    assert not set(config) & SECRET_SETTINGS, "secrets belong in the Secret"
    assert set(config) | set(secret) == names, sorted(names ^ (set(config) | set(secret)))
    Settings.from_env({**config, **secret})  # every value parses
    if target == "base":
        defaults = Settings.from_env({})
        pinned = {key for key in set(config) - DEPLOYMENT_VALUES
                  if getattr(Settings.from_env({key: config[key]}), key.lower()) != getattr(defaults, key.lower())}
        assert pinned == set(), f"differ from core/config.py's defaults: {sorted(pinned)}"
    # Every app container reads both.
    for deployment in [*objects(docs, "Deployment").values(), *objects(docs, "Job").values()]:
        if component(deployment) not in APP_COMPONENTS:
            continue
        # Service links would add REDIS_PORT=tcp://... and the like beside the settings.
        assert pod_spec(deployment).get("enableServiceLinks") is False, deployment["metadata"]["name"]
        for container in pod_spec(deployment)["containers"]:
            sources = container["envFrom"]
            assert {"configMapRef": {"name": next(d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap")}} \
                in sources, deployment["metadata"]["name"]
            assert {"secretRef": {"name": "image-queue-secrets"}} in sources, deployment["metadata"]["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_uploads_is_one_readwritemany_claim_shared_where_zips_go(target: str) -> None:
    docs = render(target)
    settings = settings_of(docs)
    claims = objects(docs, "PersistentVolumeClaim")
    assert claims["uploads"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claims["storage"]["spec"]["accessModes"] == ["ReadWriteMany"]
    mounting = set()
    for deployment in objects(docs, "Deployment").values():
        spec = pod_spec(deployment)
        volumes = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                claim = volumes[mount["name"]]
                if claim == "uploads":
                    assert mount["mountPath"] == settings.upload_dir
                    mounting.add(component(deployment))
                if claim == "storage":
                    assert mount["mountPath"] == settings.storage_dir
    assert mounting == UPLOADS_COMPONENTS
    if target == "production":
        assert claims["uploads"]["spec"].get("storageClassName"), "production names its RWX class"


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_has_requests_and_limits(target: str) -> None:
    docs = render(target)
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]
    for workload in workloads:
        for container in pod_spec(workload)["containers"]:
            where = f"{workload['kind']}/{workload['metadata']['name']}"
            resources = container["resources"]
            requests, limits = resources["requests"], resources["limits"]
            assert cpu_cores(requests["cpu"]) <= cpu_cores(limits["cpu"]), where
            assert memory_bytes(requests["memory"]) <= memory_bytes(limits["memory"]), where


@pytest.mark.parametrize("target", TARGETS)
def test_every_deployment_has_one_disruption_budget(target: str) -> None:
    docs = render(target)
    budgets = objects(docs, "PodDisruptionBudget").values()
    for deployment in objects(docs, "Deployment").values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(matching) == 1, deployment["metadata"]["name"]
        # maxUnavailable lets a node drain go on even when a kind runs one pod.
        assert "maxUnavailable" in matching[0]["spec"] or deployment["spec"].get("replicas", 1) > 1


def test_production_keeps_credentials_and_datastores_out_and_pins_images() -> None:
    docs = render("production")
    assert objects(docs, "Secret") == {}, "production Secrets are created outside the manifests"
    assert objects(docs, "StatefulSet") == {}, "production uses managed Redis and MySQL"
    images = {c["image"] for d in objects(docs, "Deployment").values() for c in pod_spec(d)["containers"]}
    for image in images:
        assert "/" in image and not image.endswith(":latest") and ":" in image, image
    # The Secrets the pods and KEDA need are described by the examples beside the overlay.
    keda_keys = {ref["key"] for auth in objects(docs, "TriggerAuthentication").values()
                 for ref in auth["spec"]["secretTargetRef"]}
    assert keda_keys == set(env_file(TARGETS["production"] / "keda-redis.env.example"))
    assert env_file(TARGETS["production"] / "keda-redis.env.example")["tls"] in ("enable", "disable")


def test_optional_gpu_patch_renders_and_validates(tmp_path: Path) -> None:
    """overlays/production/rembg-gpu.yaml is commented out of the overlay; uncommented, as the
    docs say, it must render: one GPU, the Dockerfile.rembg-gpu image at the overlay's pinned tag."""
    copy = tmp_path / "kubernetes"
    shutil.copytree(KUBE, copy)
    kustomization = copy / "overlays" / "production" / "kustomization.yaml"
    text = kustomization.read_text()
    assert text.count("  # - path: rembg-gpu.yaml\n") == 1
    kustomization.write_text(text.replace("  # - path: rembg-gpu.yaml\n", "  - path: rembg-gpu.yaml\n"))
    docs = list(_render(str(copy / "overlays" / "production")))
    rembg = objects(docs, "Deployment")["rembg"]
    (container,) = pod_spec(rembg)["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    overlay_images = {i["name"]: i for i in yaml.safe_load(text)["images"]}
    gpu = overlay_images["image-queue-rembg-gpu"]
    assert container["image"] == f"{gpu['newName']}:{gpu['newTag']}", "the GPU image, pinned by the overlay"
    (cpu_container,) = pod_spec(objects(render("production"), "Deployment")["rembg"])["containers"]
    assert container["image"] != cpu_container["image"]
    assert "Dockerfile.rembg-gpu" in (TARGETS["production"] / "rembg-gpu.yaml").read_text()
    assert "onnxruntime-gpu" in (ROOT / "Dockerfile.rembg-gpu").read_text()
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(rembg, version, strict=True)


def test_rembg_image_bakes_the_model_in() -> None:
    """The pods run Dockerfile.rembg's image (or Dockerfile.rembg-gpu's), which fetch the model
    into /models at build time; the pods set U2NET_HOME to it and mount nothing."""
    for name in ("Dockerfile.rembg", "Dockerfile.rembg-gpu"):
        dockerfile = re.sub(r"\\\n\s*", " ", (ROOT / name).read_text())  # continuation lines joined
        assert re.search(r"^ENV .*\bU2NET_HOME=/models\b", dockerfile, re.M), name
        assert re.search(r"^RUN python \S*fetch-models --model-dir /models\b", dockerfile, re.M), name
    for docs in (render("base"), render("production")):
        (container,) = pod_spec(objects(docs, "Deployment")["rembg"])["containers"]
        assert {"name": "U2NET_HOME", "value": "/models"} in container["env"]
        assert not container.get("volumeMounts"), "the model is in the image, nothing is mounted"
