"""The notifier autoscaling decision (docs/kubernetes.md, "Scale the notifiers"), checked offline.

What KEDA follows and how far: the nats-jetstream scaler's lag of consumer todos_broadcasters, which
counts pending plus ack-pending events (KEDA's scaler sums both); a threshold above what replicas
can hold, so held events never ask for replicas by themselves; 2 to 3 replicas, because one chat's
shared Telegram pace, not the replica count, limits a paced backlog; slow steps; and the
Deployment leaves its replica count to the HPA when the component is on, and only then.
"""

from __future__ import annotations

import math
import re

from notifier.pipeline import Shape
from notifier.settings import Settings
from streams import subjects
from tests.k8s.manifests import (
    KEDA,
    KEDA_SCALED_OBJECT,
    ROOT,
    Container,
    Doc,
    find,
    load_yaml,
    pod_containers,
    rendered,
)

# one spare replica over the floor of 2: more cannot help while the chat's pace is the limit
MAX_NOTIFIER_REPLICAS = 3
DOCS = ROOT / "docs" / "kubernetes.md"


def scaled_object() -> Doc:
    (scaled,) = [doc for doc in rendered(KEDA) if doc["kind"] == "ScaledObject"]
    return scaled


def trigger() -> Doc:
    (only,) = scaled_object()["spec"]["triggers"]
    return only


def notifier_settings() -> Settings:
    """The notifier's settings as the Deployment sets them (literal values; Telegram replaced by the log sink)."""
    deployment = find("Deployment", "notifier")
    (spec,) = pod_containers(deployment)
    container = Container(deployment, spec)
    literal = {name: container.env_value(name) for name in container.env_names()}
    literal = {name: value for name, value in literal.items() if value is not None}
    return Settings(**{**literal, "NOTIFIER_SINK": "log"})


def held_per_replica() -> int:
    """Most events one replica fetches and holds unacked (ack-pending), paced or not."""
    settings = notifier_settings()
    return max(Shape.of(settings, paced=True).capacity, Shape.of(settings, paced=False).capacity)


def test_keda_component_takes_the_replica_count_from_the_deployment():
    """With KEDA, `replicas` in the Deployment would be re-applied by every `kubectl apply -k`,
    undoing what the HPA scaled; without KEDA it is the count."""
    with_keda = rendered(KEDA)
    target = scaled_object()["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target.get("apiVersion", "apps/v1") == "apps/v1"
    deployment = find("Deployment", target["name"], with_keda)
    assert "replicas" not in deployment["spec"], "the ScaledObject owns the count: no replicas field"
    assert find("Deployment", target["name"])["spec"]["replicas"] >= 2, "without KEDA the file sets the count"
    assert not [doc for doc in rendered() if doc["kind"] == "ScaledObject"], "KEDA is opt-in"


def test_every_scaled_target_leaves_replicas_to_the_hpa():
    """Whatever a ScaledObject targets (now or later) carries no replicas field in the same rendering."""
    with_keda = rendered(KEDA)
    for scaled in (doc for doc in with_keda if doc["kind"] == "ScaledObject"):
        kind = scaled["spec"]["scaleTargetRef"].get("kind", "Deployment")
        assert "replicas" not in find(kind, scaled["spec"]["scaleTargetRef"]["name"], with_keda)["spec"]


def test_trigger_reads_the_lag_of_the_notifiers_consumer():
    assert trigger()["type"] == "nats-jetstream"
    metadata = trigger()["metadata"]
    assert metadata["stream"] == subjects.STREAM
    assert metadata["consumer"] == subjects.CONSUMER
    assert metadata["account"] == "$G", "no accounts configured in k8s/nats-values.yaml: the global account"
    assert metadata.get("useHttps", "false") == "false", "the chart's monitoring port speaks plain HTTP"


def test_held_events_alone_never_ask_for_another_replica():
    """KEDA's lag includes ack-pending: events replicas hold, paced, until the chat's pace lets them go.
    With N replicas holding at most C each, the HPA wants ceil(N*C / threshold) replicas from them
    alone; a threshold above C keeps that below N, so extra paced replicas cannot feed their own growth."""
    threshold = int(trigger()["metadata"]["lagThreshold"])
    held = held_per_replica()
    assert threshold > held
    for replicas in range(1, MAX_NOTIFIER_REPLICAS + 1):
        assert math.ceil(replicas * held / threshold) <= replicas
    # and not so high that a real backlog (events no replica holds yet) could never add one
    assert threshold <= 10 * held


def test_held_per_replica_follows_the_code():
    """The bound used above is the pipeline's own: 200 held events a replica with the default settings."""
    assert held_per_replica() == 200


def test_replicas_are_capped_low():
    """2 for availability (the PodDisruptionBudget keeps 1), at most one spare: see the module docstring."""
    spec = scaled_object()["spec"]
    pdb = find("PodDisruptionBudget", "notifier")
    assert spec["minReplicaCount"] > pdb["spec"]["minAvailable"], "a single replica would block node drains"
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"] <= MAX_NOTIFIER_REPLICAS
    docs = DOCS.read_text(encoding="utf-8")
    assert f"between {spec['minReplicaCount']} and {spec['maxReplicaCount']} replicas" in docs


def test_scaling_is_slow_and_safe_when_blind():
    """A replica after a lasting backlog, one at a time, five quiet minutes before one goes; if the
    monitoring endpoint cannot be read, the floor, not a guess."""
    spec = scaled_object()["spec"]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] >= 60
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    for direction in ("scaleUp", "scaleDown"):
        for policy in behavior[direction]["policies"]:
            assert policy["type"] == "Pods"
            assert policy["value"] == 1
    assert spec["fallback"]["replicas"] == spec["minReplicaCount"]
    assert spec["fallback"]["failureThreshold"] >= 3
    assert "activationLagThreshold" not in trigger()["metadata"] or spec["minReplicaCount"] == 0, (
        "activation only decides 0 <-> 1 replicas"
    )


def test_scaled_object_file_explains_the_decision():
    """The numbers in the file's header are the ones the code and the trigger use."""
    text = KEDA_SCALED_OBJECT.read_text(encoding="utf-8")
    (scaled,) = load_yaml(KEDA_SCALED_OBJECT)
    assert f"between {scaled['spec']['minReplicaCount']} and {scaled['spec']['maxReplicaCount']}" in text
    assert re.search(rf"= {held_per_replica()} each", text)
    assert f"lagThreshold {trigger()['metadata']['lagThreshold']}" in text
