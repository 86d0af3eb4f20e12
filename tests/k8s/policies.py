"""NetworkPolicies as data: what the policies selecting a pod let in or out, as Kubernetes combines them.

Policies add up: a pod selected by at least one policy of a direction is isolated in it, and then
allowed exactly the union of their rules. A rule is flattened to (peer, port, protocol) triples; a
rule without peers or without ports allows every peer or every port (ANY).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from tests.k8s.manifests import Doc, pod_spec

ANY = "any"
Direction = Literal["ingress", "egress"]
# the pods of the NATS Helm release my-nats (the chart's nats.selectorLabels and natsBox.selectorLabels)
NATS_SERVER_LABELS = {
    "app.kubernetes.io/name": "nats",
    "app.kubernetes.io/instance": "my-nats",
    "app.kubernetes.io/component": "nats",
}
NATS_BOX_LABELS = {**NATS_SERVER_LABELS, "app.kubernetes.io/component": "nats-box"}


@dataclass(frozen=True)
class Allowed:
    """One peer on one port: `peer` is the peer's canonical JSON (see `peer_key`) or ANY."""

    peer: str
    port: int | str
    protocol: str


def peer_key(peer: Doc) -> str:
    return json.dumps(peer, sort_keys=True)


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions) against a pod's labels."""
    assert set(selector) <= {"matchLabels", "matchExpressions"}, selector
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        if operator == "In":
            matched = labels.get(key) in expression["values"]
        elif operator == "NotIn":
            matched = labels.get(key) not in expression["values"]
        else:
            assert operator in {"Exists", "DoesNotExist"}, operator
            matched = (key in labels) == (operator == "Exists")
        if not matched:
            return False
    return True


def network_policies(docs: list[Doc]) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == "NetworkPolicy"]


def allowed(docs: list[Doc], pod_labels: dict[str, str], direction: Direction) -> set[Allowed] | None:
    """What reaches (ingress) or is reached by (egress) a pod of `project` with these labels; None when
    no policy isolates it in that direction (everything is allowed)."""
    kind = direction.capitalize()
    chosen = [
        policy
        for policy in network_policies(docs)
        if kind in policy["spec"]["policyTypes"] and selects(policy["spec"]["podSelector"], pod_labels)
    ]
    if not chosen:
        return None
    found = set()
    for policy in chosen:
        for rule in policy["spec"].get(direction) or []:
            peers = rule.get("from" if direction == "ingress" else "to") or [None]
            ports = rule.get("ports") or [None]
            for peer in peers:
                for port in ports:
                    found.add(
                        Allowed(
                            ANY if peer is None else peer_key(peer),
                            ANY if port is None else port["port"],
                            ANY if port is None else port.get("protocol", "TCP"),
                        )
                    )
    return found


def pod_labels(workload: Doc) -> dict[str, str]:
    assert pod_spec(workload) is not None, workload["metadata"]["name"]
    return dict(workload["spec"]["template"]["metadata"]["labels"])
