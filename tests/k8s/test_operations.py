"""What a real cluster does with the manifests: node drains, probe commands, DNS under NetworkPolicy."""

from __future__ import annotations

import ipaddress
import re

import pytest
import yaml

from tests.k8s.manifests import (
    COMPONENTS,
    NODE_LOCAL_DNS,
    ROOT,
    Container,
    Doc,
    component,
    component_names,
    containers,
    find,
    pod_containers,
    rendered,
)

EVERYTHING = rendered(*component_names())
ALL_CONTAINERS = [Container(doc, spec) for doc in EVERYTHING for spec in pod_containers(doc)]
# NodeLocal DNSCache's default link-local address (its manifest's __PILLAR__LOCAL__DNS__)
NODE_LOCAL_DNS_ADDRESS = "169.254.20.10"
KUBE_DNS = {"k8s-app": "kube-dns"}


def _exec_commands(container: Container) -> list[tuple[str, list[str]]]:
    """(where, command) of every exec the kubelet runs in the container: probes and lifecycle hooks."""
    found = []
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container.spec.get(kind, {}).get("exec", {}).get("command")
        if command:
            found.append((kind, command))
    for hook, handler in container.spec.get("lifecycle", {}).items():
        if "exec" in handler:
            found.append((f"lifecycle.{hook}", handler["exec"]["command"]))
    return found


def _kubelet_expansion_problems(container: Container) -> list[str]:
    """$(VAR) is expanded in command, args and env values only, never in an exec probe or hook: it
    reaches the program as the literal text `$(VAR)`. A variable there needs a shell, and a value."""
    problems = []
    env = container.env_names()
    for where, command in _exec_commands(container):
        text = " ".join(command)
        if "$(" in text:
            problems.append(f"{container.label} {where}: `$(` is passed literally (no kubelet expansion)")
        variables = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text))
        if variables and command[:2] not in (["sh", "-c"], ["/bin/sh", "-c"]):
            problems.append(f"{container.label} {where}: reads {sorted(variables)} without a shell")
        if missing := variables - env:
            problems.append(f"{container.label} {where}: {sorted(missing)} not set on the container")
    return problems


@pytest.mark.parametrize("container", ALL_CONTAINERS, ids=[c.label for c in ALL_CONTAINERS])
def test_exec_commands_read_variables_through_a_shell(container: Container):
    assert _kubelet_expansion_problems(container) == []


def test_postgres_probes_check_the_configured_user_and_database():
    (postgres,) = [c for c in containers() if c.label == "StatefulSet/postgres/postgres"]
    commands = _exec_commands(postgres)
    assert {where for where, _ in commands} >= {"startupProbe", "readinessProbe", "livenessProbe"}
    for _, command in commands:
        assert command[:2] == ["sh", "-c"]
        assert '-U "$POSTGRES_USER"' in command[2]
        assert '-d "$POSTGRES_DB"' in command[2]


def test_expansion_check_catches_the_kubelet_form():
    """The check above fails on `$(POSTGRES_USER)` in a probe, and on a variable without a shell."""
    (postgres,) = [c for c in containers() if c.label == "StatefulSet/postgres/postgres"]
    postgres.spec["readinessProbe"]["exec"]["command"] = ["pg_isready", "-U", "$(POSTGRES_USER)"]
    postgres.spec["livenessProbe"]["exec"]["command"] = ["pg_isready", "-U", "$POSTGRES_USER"]
    problems = _kubelet_expansion_problems(postgres)
    assert any("readinessProbe: `$(`" in problem for problem in problems)
    assert any("livenessProbe: reads ['POSTGRES_USER'] without a shell" in problem for problem in problems)


def _pdbs() -> list[Doc]:
    return [doc for doc in EVERYTHING if doc["kind"] == "PodDisruptionBudget"]


@pytest.mark.parametrize("pdb", _pdbs(), ids=[d["metadata"]["name"] for d in _pdbs()])
def test_every_pdb_lets_drains_evict_unready_pods(pdb: Doc):
    """With the default IfHealthyBudget, a workload whose pods are all unready blocks node drains."""
    assert pdb["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow"


def test_every_replicated_workload_has_a_pdb_it_can_satisfy():
    """A budget keeping every replica (minAvailable >= replicas) would block drains even when healthy."""
    for name in ("web", "notifier"):
        pdb = find("PodDisruptionBudget", name)
        assert pdb["spec"]["minAvailable"] < find("Deployment", name)["spec"]["replicas"], name


def _policies(docs: list[Doc]) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "NetworkPolicy"}


def _dns_rules(policy: Doc) -> list[Doc]:
    """Egress rules that open port 53."""
    return [
        rule for rule in policy["spec"].get("egress", []) if any(p.get("port") == 53 for p in rule.get("ports", []))
    ]


def _reaches_kube_dns(policy: Doc) -> bool:
    return any(
        peer.get("podSelector", {}).get("matchLabels") == KUBE_DNS for rule in _dns_rules(policy) for peer in rule["to"]
    )


def _allowed_dns_addresses(policy: Doc) -> set[ipaddress.IPv4Network]:
    return {
        ipaddress.ip_network(peer["ipBlock"]["cidr"])
        for rule in _dns_rules(policy)
        for peer in rule["to"]
        if "ipBlock" in peer and {(p["port"], p["protocol"]) for p in rule["ports"]} >= {(53, "UDP"), (53, "TCP")}
    }


def test_base_dns_egress_goes_to_kube_dns_on_udp_and_tcp():
    """Every policy that lets its pods out at all lets them resolve names (postgres goes nowhere)."""
    for name, policy in _policies(rendered()).items():
        if "Egress" not in policy["spec"]["policyTypes"] or not policy["spec"].get("egress"):
            continue
        assert _reaches_kube_dns(policy), name
        for rule in _dns_rules(policy):
            assert {(p["port"], p["protocol"]) for p in rule["ports"]} == {(53, "UDP"), (53, "TCP")}, name


def test_node_local_dns_component_opens_every_dns_egress_policy():
    """Every policy that lets its pods reach kube-dns also reaches NodeLocal DNSCache with the component
    (a new policy with DNS egress that the component forgot would fail here), and no other policy changes."""
    base = _policies(rendered())
    with_cache = _policies(rendered(NODE_LOCAL_DNS))
    cache = ipaddress.ip_address(NODE_LOCAL_DNS_ADDRESS)
    for name, policy in base.items():
        if _reaches_kube_dns(policy):
            assert any(cache in network for network in _allowed_dns_addresses(with_cache[name])), name
            assert all(network.prefixlen == 32 for network in _allowed_dns_addresses(with_cache[name])), name
        else:
            assert with_cache[name] == policy, name
    assert not any(_allowed_dns_addresses(policy) for policy in base.values()), "the base stays kube-dns only"


def test_node_local_dns_addresses_are_documented():
    """The addresses of the patch are named in the docs, where they say how to set yours."""
    spec = component(NODE_LOCAL_DNS)
    (path,) = {patch["path"] for patch in spec["patches"]}
    operations = yaml.safe_load((COMPONENTS / NODE_LOCAL_DNS / path).read_text(encoding="utf-8"))
    docs = (ROOT / "docs" / "kubernetes.md").read_text(encoding="utf-8")
    cidrs = [peer["ipBlock"]["cidr"] for operation in operations for peer in operation["value"]["to"]]
    assert f"{NODE_LOCAL_DNS_ADDRESS}/32" in cidrs
    for cidr in cidrs:
        assert f"`{cidr}`" in docs, cidr
