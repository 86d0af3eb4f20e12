"""Every manifest is valid Kubernetes, offline, and the kustomization applies all of them."""

from __future__ import annotations

import copy
import shutil
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.k8s.manifests import (
    COMPONENTS,
    K8S,
    KEDA_SCALED_OBJECT,
    KUBERNETES_VERSION,
    KUSTOMIZATION,
    NOT_RESOURCES,
    SECRETS_EXAMPLE,
    UNDERSTOOD_COMPONENT_FIELDS,
    UNDERSTOOD_FIELDS,
    UNDERSTOOD_GENERATOR_FIELDS,
    UNDERSTOOD_GENERATOR_OPTIONS,
    Doc,
    apply_json_patch,
    component,
    component_names,
    find,
    kustomization,
    load_yaml,
    rendered,
    without_source,
)


def _ids(docs: list[dict]) -> list[str]:
    return [f"{d['kind']}/{d['metadata']['name']}" for d in docs]


RENDERED = rendered()
EXAMPLE_SECRETS = load_yaml(SECRETS_EXAMPLE)
# every component enabled: the objects they add or change (the rest is RENDERED again)
WITH_COMPONENTS = [
    doc
    for doc in rendered(*component_names())
    if doc["apiVersion"] != "keda.sh/v1alpha1" and without_source(doc) not in map(without_source, RENDERED)
]


@pytest.mark.parametrize("doc", RENDERED + EXAMPLE_SECRETS, ids=_ids(RENDERED + EXAMPLE_SECRETS))
def test_manifest_validates_against_kubernetes_schema(doc):
    """Each object of the kustomization (and the example Secrets) passes the strict schema."""
    assert kubernetes_validate.validate(without_source(doc), KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


@pytest.mark.parametrize("doc", WITH_COMPONENTS, ids=_ids(WITH_COMPONENTS))
def test_objects_changed_by_components_validate(doc):
    """What the components patch (the notifier without replicas, the policies with NodeLocal DNS) is valid too."""
    assert kubernetes_validate.validate(without_source(doc), KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


def test_components_change_something():
    """Each component patches or adds what it says (else the test above would check nothing)."""
    assert {"Deployment/notifier", "NetworkPolicy/web", "NetworkPolicy/notifier"} <= set(_ids(WITH_COMPONENTS))


def test_strict_validation_catches_a_misspelt_field():
    """The validator used above really rejects a typo (so its passing means something)."""
    deployment = copy.deepcopy(without_source(find("Deployment", "web")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(jsonschema.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest():
    """Every YAML file in k8s/ is a kustomize resource, except the documented non-resources; every file
    under components/ is a component's kustomization, or a resource or patch a component names."""
    files = set(K8S.glob("*.y*ml")) - NOT_RESOURCES
    listed = {K8S / resource for resource in kustomization()["resources"]}
    assert listed == files
    assert all(path.is_file() for path in listed)
    used = set()
    for name in component_names():
        spec = component(name)
        used.add(COMPONENTS / name / "kustomization.yaml")
        used |= {COMPONENTS / name / resource for resource in spec.get("resources", [])}
        used |= {COMPONENTS / name / patch["path"] for patch in spec.get("patches", []) if "path" in patch}
    assert set(COMPONENTS.rglob("*.y*ml")) == used
    assert all(path.is_file() for path in used)
    assert KEDA_SCALED_OBJECT in used
    assert component_names() == ["keda", "node-local-dns"], "every component needs its own tests and docs"


def test_kustomization_uses_only_understood_fields():
    """The renderer in manifests.py understands every field used, so what it checks is what applies."""
    assert set(kustomization()) <= UNDERSTOOD_FIELDS
    assert kustomization()["namespace"] == "project"
    for generator in kustomization().get("configMapGenerator", []):
        assert set(generator) <= UNDERSTOOD_GENERATOR_FIELDS, generator
        assert set(generator.get("options", {})) <= UNDERSTOOD_GENERATOR_OPTIONS, generator
    for name in kustomization().get("components") or []:
        assert (K8S / name / "kustomization.yaml").is_file(), name
    for name in component_names():
        spec = component(name)
        assert spec["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
        assert spec["kind"] == "Component"
        assert set(spec) <= UNDERSTOOD_COMPONENT_FIELDS, name
        for patch in spec.get("patches", []):
            assert set(patch) in ({"target", "patch"}, {"target", "path"}), patch
            assert set(patch["target"]) <= {"group", "version", "kind", "name"}, patch


def test_base_enables_no_component():
    """The base applies on any cluster: KEDA's CRDs and NodeLocal DNSCache are opt-in."""
    assert not kustomization().get("components")
    assert not [d for d in RENDERED if d["apiVersion"].startswith("keda.sh/")]


def test_json_patch_removal_of_a_missing_field_fails():
    """As in kustomize: a component whose patch no longer finds its field fails instead of doing nothing."""
    doc: Doc = {"spec": {"template": {}}}
    with pytest.raises(KeyError):
        apply_json_patch(doc, [{"op": "remove", "path": "/spec/replicas"}])


def _kubectl_kustomize(tmp_path, components: list[str]) -> list[Doc]:
    """`kubectl kustomize` of a copy of k8s/ with these components listed."""
    copy_dir = tmp_path / "k8s"
    shutil.copytree(K8S, copy_dir)
    spec = yaml.safe_load((copy_dir / "kustomization.yaml").read_text(encoding="utf-8"))
    if components:
        spec["components"] = [f"components/{name}" for name in components]
    (copy_dir / "kustomization.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    kubectl = shutil.which("kubectl")
    assert kubectl is not None
    result = subprocess.run(
        [kubectl, "kustomize", str(copy_dir)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _by_key(docs: list[Doc]) -> dict[tuple[str, str], Doc]:
    return {(doc["kind"], doc["metadata"]["name"]): without_source(doc) for doc in docs}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its kustomize) is not installed")
@pytest.mark.parametrize("components", [[], component_names()], ids=["base", "all-components"])
def test_renderer_matches_kubectl_kustomize(tmp_path, components):
    """The objects these tests check are the objects `kubectl apply -k` would send."""
    assert _by_key(rendered(*components)) == _by_key(_kubectl_kustomize(tmp_path, components))


def test_objects_are_unique_and_in_the_project_namespace():
    keys = [(d["kind"], d["metadata"]["name"]) for d in RENDERED]
    assert len(keys) == len(set(keys))
    namespaced = [d for d in RENDERED if d["kind"] != "Namespace"]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"project"}
    assert find("Namespace", "project")
    for doc in load_yaml(KUSTOMIZATION.parent / "namespace.yaml"):
        assert doc["metadata"]["name"] == kustomization()["namespace"]


def test_selectors_match_their_pod_templates_and_services_their_pods():
    workloads = [d for d in RENDERED if d["kind"] in {"Deployment", "StatefulSet"}]
    for workload in workloads:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items(), workload["metadata"]["name"]
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads]
    for service in (d for d in RENDERED if d["kind"] == "Service"):
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pod_labels), service["metadata"]["name"]
    for pdb in (d for d in RENDERED if d["kind"] == "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(selector.items() <= labels.items() for labels in pod_labels), pdb["metadata"]["name"]
    for statefulset in (w for w in workloads if w["kind"] == "StatefulSet"):
        find("Service", statefulset["spec"]["serviceName"])


def test_ingress_routes_the_api_and_the_page_to_the_web_service_port_and_nothing_else():
    ingress = find("Ingress", "web")
    service = find("Service", "web")
    routed = set()
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
            routed.add((path["path"], path["pathType"]))
    # /metrics, /healthz and /readyz stay inside the cluster
    assert routed == {("/api", "Prefix"), ("/", "Exact"), ("/static", "Prefix")}


KEDA_TRIGGER_FIELDS = {
    "natsServerMonitoringEndpoint",
    "account",
    "stream",
    "consumer",
    "lagThreshold",
    "activationLagThreshold",
    "useHttps",
}
SCALED_OBJECT_SPEC_FIELDS = {
    "scaleTargetRef",
    "minReplicaCount",
    "maxReplicaCount",
    "idleReplicaCount",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "advanced",
    "fallback",
    "triggers",
}


def test_keda_scaled_object_structure():
    """No schema ships for KEDA's CRD: check the ScaledObject against KEDA's documented fields."""
    (scaled,) = load_yaml(KEDA_SCALED_OBJECT)
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["kind"] == "ScaledObject"
    assert scaled["metadata"]["namespace"] == kustomization()["namespace"]
    spec = scaled["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC_FIELDS
    target = find("Deployment", spec["scaleTargetRef"]["name"])
    assert target["metadata"]["name"] == "notifier"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    pdb = find("PodDisruptionBudget", "notifier")
    assert spec["minReplicaCount"] > pdb["spec"]["minAvailable"], "a single replica would block node drains"
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "nats-jetstream"
    metadata = trigger["metadata"]
    assert set(metadata) <= KEDA_TRIGGER_FIELDS
    assert {"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"} <= set(metadata)
    assert all(isinstance(value, str) for value in metadata.values()), "KEDA trigger metadata values are strings"
    assert int(metadata["lagThreshold"]) > 0
    # the metadata of a ScaledObject is ordinary object metadata
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": scaled["metadata"]}, KUBERNETES_VERSION, strict=True
    )
