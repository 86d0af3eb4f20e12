"""k8s/nats-values.yaml against the pinned NATS chart: its keys, its version, and what it makes of them.

No Helm here: the few templates that matter (the nats container, the pods' topology spread, the
PodDisruptionBudget) are rebuilt from the chart's source as the chart builds them, then validated
with the Kubernetes schemas like every manifest of the kustomization.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from nats.js.api import StorageType

from streams import topology
from tests.k8s.manifests import (
    KUBERNETES_VERSION,
    NATS_VALUES,
    ROOT,
    Doc,
    find,
    rendered,
)

RELEASE = "my-nats"
# `nats.selectorLabels` of the chart's _helpers.tpl, for release my-nats
SELECTOR_LABELS = {
    "app.kubernetes.io/name": "nats",
    "app.kubernetes.io/instance": RELEASE,
    "app.kubernetes.io/component": "nats",
}

# The keys of the chart's values.yaml (nats-io/k8s helm/charts/nats, the 1.x schema that 2.x keeps)
# that these values may use; FREE marks the chart's free-form maps (merge/patch documents, env,
# spread constraints keyed by topologyKey), which tests below check against Kubernetes' schemas.
# A new key goes here after reading it in the pinned chart's values.yaml.
FREE = object()
_MERGE_PATCH = {"merge": FREE, "patch": FREE}
_TLS = {"enabled": None, "secretName": None, "merge": FREE, "patch": FREE}
CHART_KEYS: dict[str, Any] = {
    "global": FREE,
    "nameOverride": None,
    "fullnameOverride": None,
    "namespaceOverride": None,
    "config": {
        "cluster": {
            "enabled": None,
            "port": None,
            "replicas": None,
            "name": None,
            "noAdvertise": None,
            "routeURLs": FREE,
            "tls": _TLS,
            **_MERGE_PATCH,
        },
        "nats": {"port": None, "tls": _TLS},
        "jetstream": {
            "enabled": None,
            "domain": None,
            "fileStore": {
                "enabled": None,
                "dir": None,
                "pvc": {"enabled": None, "size": None, "storageClassName": None, "name": None, **_MERGE_PATCH},
                "maxSize": None,
            },
            "memoryStore": {"enabled": None, "maxSize": None},
            **_MERGE_PATCH,
        },
        "monitor": {"enabled": None, "port": None, "tls": {"enabled": None}},
        "profiling": {"enabled": None, "port": None},
        "serverNamePrefix": None,
        **_MERGE_PATCH,
    },
    "container": {"image": FREE, "ports": FREE, "env": FREE, **_MERGE_PATCH},
    "reloader": {"enabled": None, "image": FREE, "env": FREE, **_MERGE_PATCH},
    "promExporter": {"enabled": None, "image": FREE, "port": None, "env": FREE, "podMonitor": FREE, **_MERGE_PATCH},
    "service": {"enabled": None, "name": None, "ports": {port: {"enabled": None} for port in (
        "nats", "leafnodes", "websocket", "mqtt", "cluster", "gateway", "monitor", "profiling")}, **_MERGE_PATCH},
    "statefulSet": {"name": None, **_MERGE_PATCH},
    "podTemplate": {"configChecksumAnnotation": None, "topologySpreadConstraints": FREE, **_MERGE_PATCH},
    "headlessService": {"name": None, **_MERGE_PATCH},
    "configMap": {"name": None, **_MERGE_PATCH},
    "podDisruptionBudget": {"enabled": None, "name": None, **_MERGE_PATCH},
    "serviceAccount": {"enabled": None, "name": None, **_MERGE_PATCH},
    "natsBox": FREE,
    "extraResources": FREE,
}  # fmt: skip

# every file that may name the chart in a command (tests are not: they quote commands to check them)
CHART_REFERENCES = [ROOT / "docs" / "kubernetes.md", NATS_VALUES, ROOT / "README.md", ROOT / "Justfile"]
HELM_CHART_COMMAND = re.compile(r"helm\s+(?:install|upgrade|template|pull|show)\b[^\n`]*?\bnats/nats\b[^\n`]*")
EXACT_VERSION = re.compile(r"--version[ =](\S+)")


@cache
def values() -> Doc:
    return yaml.safe_load(NATS_VALUES.read_text(encoding="utf-8"))


def _unknown_keys(doc: Any, schema: Any, path: str = "") -> list[str]:
    if schema is FREE or schema is None:
        return [] if schema is FREE or not isinstance(doc, dict) else [f"{path}: a value, not a map"]
    if not isinstance(doc, dict):
        return [f"{path}: a map in the chart"]
    unknown = [f"{path}.{key}".lstrip(".") for key in doc if key not in schema]
    return unknown + [
        problem for key in doc if key in schema for problem in _unknown_keys(doc[key], schema[key], f"{path}.{key}")
    ]


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_GO_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def quantity(value: str | int) -> float:
    """A Kubernetes quantity ("2Gi", "1", "500m") as a number (bytes, cores)."""
    text = str(value)
    if text.endswith("m"):
        return int(text[:-1]) / 1000
    for suffix, factor in _BINARY.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return float(text)


def go_memory_limit(value: str) -> int:
    """GOMEMLIMIT as the Go runtime reads it: a number with B, KiB, MiB, GiB or TiB (not Kubernetes' Gi)."""
    match = re.fullmatch(r"(\d+)(B|KiB|MiB|GiB|TiB)?", value)
    assert match, f"GOMEMLIMIT={value!r}: the Go runtime reads B, KiB, MiB, GiB or TiB only"
    return int(match[1]) * _GO_UNITS[match[2] or "B"]


def nats_container() -> Doc:
    """The chart's nats container (files/stateful-set/nats-container.yaml) with these values merged."""
    container: Doc = {
        "name": "nats",
        "image": "nats:2.14-alpine",
        "args": ["--config", "/etc/nats-config/nats.conf"],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "SERVER_NAME", "value": "$(POD_NAME)"},
        ],
    }
    # nats.env: a string is a value, a map is the rest of an EnvVar
    for name, value in (values()["container"].get("env") or {}).items():
        container["env"].append({"name": name, "value": value} if isinstance(value, str) else {"name": name, **value})
    container.update(copy.deepcopy(values()["container"].get("merge", {})))
    return container


def topology_spread_constraints() -> list[Doc]:
    """As files/stateful-set/pod-template.yaml renders the map: sprig's merge keeps the chart's own
    topologyKey and labelSelector over whatever the value says, and fills in the rest from it."""
    constraints = values().get("podTemplate", {}).get("topologySpreadConstraints") or {}
    return [
        {**copy.deepcopy(spec), "topologyKey": key, "labelSelector": {"matchLabels": dict(SELECTOR_LABELS)}}
        for key, spec in constraints.items()
    ]


def _deep_merge(base: Doc, extra: Doc) -> Doc:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        merged[key] = (
            _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def nats_pdb() -> Doc:
    """files/pod-disruption-budget.yaml with podDisruptionBudget.merge (the chart's mergeOverwrite)."""
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": RELEASE, "labels": dict(SELECTOR_LABELS)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(SELECTOR_LABELS)}},
    }
    return _deep_merge(pdb, values()["podDisruptionBudget"].get("merge", {}))


def test_values_use_only_keys_of_the_chart():
    """A misspelt or 0.x-style key (`nats.jetstream`, `cluster.enabled` at the top) is silently ignored by Helm."""
    assert _unknown_keys(values(), CHART_KEYS) == []


def test_unknown_key_check_catches_a_0x_key():
    """The check above fails on the 0.x layout the 1.x/2.x chart no longer reads."""
    assert _unknown_keys({"cluster": {"enabled": True}, "nats": {"jetstream": {}}}, CHART_KEYS) == ["cluster", "nats"]
    assert _unknown_keys({"config": {"jetstream": {"fileStorage": {}}}}, CHART_KEYS) == ["config.jetstream.fileStorage"]


def test_a_three_node_jetstream_cluster_on_file_storage_with_monitoring():
    config = values()["config"]
    assert config["cluster"]["enabled"] is True
    assert config["cluster"]["replicas"] == 3
    assert config["jetstream"]["enabled"] is True
    assert config["jetstream"]["fileStore"]["enabled"] is True
    assert config["jetstream"]["fileStore"]["pvc"]["enabled"] is True
    assert config["jetstream"]["fileStore"]["pvc"]["size"].endswith("Gi")
    assert config["monitor"] == {"enabled": True, "port": 8222}


def _chart_commands() -> list[tuple[Path, str]]:
    return [
        (path, match.group(0))
        for path in CHART_REFERENCES
        if path.is_file()
        for match in HELM_CHART_COMMAND.finditer(path.read_text(encoding="utf-8"))
    ]


def test_every_chart_command_pins_the_same_exact_2x_version():
    """Without --version Helm installs the newest chart, whose values schema or server may differ."""
    commands = _chart_commands()
    assert any("helm install" in command for _, command in commands)
    assert any("helm upgrade" in command for _, command in commands)
    versions = set()
    for path, command in commands:
        match = EXACT_VERSION.search(command)
        assert match, f"{path.relative_to(ROOT)}: `{command}` does not pin --version"
        versions.add(match[1])
    assert len(versions) == 1, f"different chart versions: {sorted(versions)}"
    (version,) = versions
    assert re.fullmatch(r"2\.\d+\.\d+", version), f"{version}: an exact 2.x chart version (no range, no pre-release)"
    for path in (ROOT / "docs" / "kubernetes.md", NATS_VALUES):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"chart,?\s+1\.x", text), f"{path.name} still speaks of chart 1.x"
        assert version in text, f"{path.name} does not name the pinned version"


def test_chart_command_pattern_finds_an_unpinned_install():
    assert HELM_CHART_COMMAND.search("run helm install my-nats nats/nats -n project")
    assert not EXACT_VERSION.search("helm install my-nats nats/nats -n project -f k8s/nats-values.yaml")


def test_nats_servers_spread_over_nodes():
    """Three servers, three nodes: two on one node would lose the RAFT quorum with that node."""
    (constraint,) = topology_spread_constraints()
    assert constraint["topologyKey"] == "kubernetes.io/hostname"
    assert constraint["maxSkew"] == 1
    assert constraint["whenUnsatisfiable"] == "DoNotSchedule", "ScheduleAnyway would still double up"
    given = values()["podTemplate"]["topologySpreadConstraints"]["kubernetes.io/hostname"].get("labelSelector")
    assert given in (None, {"matchLabels": SELECTOR_LABELS}), "the chart uses its own pods' labels"


def test_network_policies_select_the_chart_pods():
    """The labels the NATS policy and the app's egress rules select are the ones the chart puts on its pods."""
    policy = find("NetworkPolicy", "nats")
    assert policy["spec"]["podSelector"]["matchLabels"] == SELECTOR_LABELS
    for name in ("web", "notifier", "streams-bootstrap"):
        rules = find("NetworkPolicy", name)["spec"]["egress"]
        selectors = [peer.get("podSelector", {}).get("matchLabels") for rule in rules for peer in rule.get("to", [])]
        assert SELECTOR_LABELS in selectors, name


def test_nats_container_requests_equal_limits():
    """The chart's advice for JetStream: a server that is CPU-throttled or OOM-killed stalls its RAFT groups."""
    resources = nats_container()["resources"]
    for resource in ("cpu", "memory"):
        assert resource in resources["limits"], resource
        assert quantity(resources["requests"][resource]) == quantity(resources["limits"][resource]), resource


def test_gomemlimit_is_about_80_percent_of_the_memory_limit():
    env = {item["name"]: item.get("value") for item in nats_container()["env"]}
    assert "GOMEMLIMIT" in env, "container.env.GOMEMLIMIT, as the chart recommends"
    limit = quantity(nats_container()["resources"]["limits"]["memory"])
    assert 0.75 <= go_memory_limit(env["GOMEMLIMIT"]) / limit <= 0.85


def test_gomemlimit_parser_rejects_kubernetes_units():
    with pytest.raises(AssertionError):
        go_memory_limit("2Gi")
    assert go_memory_limit("1638MiB") == 1638 * 2**20


def test_jetstream_stores_fit_the_container_and_the_volume():
    """The file store below its PVC (RAFT logs need room); a memory store inside the Go heap's budget, or
    none, in which case every stream and KV bucket the topology creates must be file-backed."""
    jetstream = values()["config"]["jetstream"]
    file_store = jetstream["fileStore"]
    assert quantity(file_store["maxSize"]) < quantity(file_store["pvc"]["size"])
    memory_store = jetstream.get("memoryStore", {})
    env = {item["name"]: item.get("value") for item in nats_container()["env"]}
    if memory_store.get("enabled"):
        assert quantity(memory_store["maxSize"]) <= go_memory_limit(env["GOMEMLIMIT"]) / 2
        return
    assert topology.stream_config().storage == StorageType.FILE
    assert topology.dlq_stream_config().storage == StorageType.FILE
    for config in topology.kv_configs():
        assert config.storage in (None, StorageType.FILE), config.bucket  # None: the server's default, file


def test_nats_pod_as_the_chart_renders_it_is_valid_kubernetes():
    """The container (env, resources) and the spread constraints, in a Pod, pass the strict schema."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{RELEASE}-0", "labels": dict(SELECTOR_LABELS)},
        "spec": {"containers": [nats_container()], "topologySpreadConstraints": topology_spread_constraints()},
    }
    assert kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


def test_nats_pdb_evicts_unhealthy_servers_and_is_valid():
    pdb = nats_pdb()
    assert values()["podDisruptionBudget"]["enabled"] is True
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert kubernetes_validate.validate(pdb, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


def test_nats_stream_replicas_fit_the_cluster():
    """NATS_STREAM_REPLICAS (the ConfigMap) cannot exceed the servers, one per node."""
    replicas = int(find("ConfigMap", "todo-events")["data"]["NATS_STREAM_REPLICAS"])
    assert replicas <= values()["config"]["cluster"]["replicas"]
    assert not [d for d in rendered() if d["metadata"]["name"].startswith(RELEASE)], "Helm owns the NATS objects"
