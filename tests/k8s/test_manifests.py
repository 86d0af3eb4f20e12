"""Every manifest is valid Kubernetes, offline, and the kustomization applies all of them."""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest

from tests.k8s.manifests import (
    K8S,
    KEDA_SCALED_OBJECT,
    KUSTOMIZATION,
    NOT_RESOURCES,
    OPTIONAL,
    SECRETS_EXAMPLE,
    UNDERSTOOD_FIELDS,
    find,
    kustomization,
    load_yaml,
    rendered,
    without_source,
)

# a current Kubernetes (kubernetes-validate bundles schemas up to its own version); strict mode
# rejects unknown fields, so a misspelt key fails instead of being silently dropped by the API
KUBERNETES_VERSION = "1.35"


def _ids(docs: list[dict]) -> list[str]:
    return [f"{d['kind']}/{d['metadata']['name']}" for d in docs]


RENDERED = rendered()
EXAMPLE_SECRETS = load_yaml(SECRETS_EXAMPLE)


@pytest.mark.parametrize("doc", RENDERED + EXAMPLE_SECRETS, ids=_ids(RENDERED + EXAMPLE_SECRETS))
def test_manifest_validates_against_kubernetes_schema(doc):
    """Each object of the kustomization (and the example Secrets) passes the strict schema."""
    assert kubernetes_validate.validate(without_source(doc), KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


def test_strict_validation_catches_a_misspelt_field():
    """The validator used above really rejects a typo (so its passing means something)."""
    deployment = copy.deepcopy(without_source(find("Deployment", "web")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(jsonschema.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest():
    """Every YAML file in k8s/ is a kustomize resource, except the documented non-resources."""
    files = set(K8S.glob("*.y*ml")) - NOT_RESOURCES
    listed = {K8S / resource for resource in kustomization()["resources"]}
    assert listed == files
    assert all(path.is_file() for path in listed)
    optional = set(OPTIONAL.rglob("*.y*ml"))
    assert optional == {KEDA_SCALED_OBJECT}, "every optional file needs its own test and a line in the docs"


def test_kustomization_uses_only_understood_fields():
    """The renderer in manifests.py understands every field used, so what it checks is what applies."""
    assert set(kustomization()) <= UNDERSTOOD_FIELDS
    assert kustomization()["namespace"] == "project"


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


def test_ingress_routes_the_api_to_the_web_service_port():
    ingress = find("Ingress", "web")
    service = find("Service", "web")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
            assert path["path"].startswith("/api")


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
