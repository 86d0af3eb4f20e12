"""k8s/ as data: the kustomization rendered the way `kubectl apply -k k8s/` would, without kubectl.

Only the kustomize fields k8s/ uses are understood (resources, components, namespace, labels,
images, configMapGenerator from files without the hash suffix; in a component resources and JSON 6902
patches); `test_kustomization_uses_only_understood_fields` keeps it that way, and where kubectl is
installed `test_renderer_matches_kubectl_kustomize` compares.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from pydantic_settings import BaseSettings

from streams.connection import NatsSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
NATS_VALUES = K8S / "nats-values.yaml"
SECRETS_EXAMPLE = K8S / "secrets.example.yaml"
COMPONENTS = K8S / "components"
KEDA = "keda"
NODE_LOCAL_DNS = "node-local-dns"
KEDA_SCALED_OBJECT = COMPONENTS / KEDA / "scaledobject.yaml"
# files in k8s/ that are deliberately not kustomize resources (each says why in its header)
NOT_RESOURCES = {KUSTOMIZATION, NATS_VALUES, SECRETS_EXAMPLE}
UNDERSTOOD_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "components",
    "images",
    "configMapGenerator",
}
UNDERSTOOD_GENERATOR_FIELDS = {"name", "files", "options"}
# the renderer names a generated ConfigMap as written: it does not compute kustomize's hash suffix
UNDERSTOOD_GENERATOR_OPTIONS = {"disableNameSuffixHash", "labels"}
UNDERSTOOD_COMPONENT_FIELDS = {"apiVersion", "kind", "resources", "patches"}
# a current Kubernetes (kubernetes-validate bundles schemas up to its own version); strict mode
# rejects unknown fields, so a misspelt key fails instead of being silently dropped by the API
KUBERNETES_VERSION = "1.35"
# the image built from ./Dockerfile, as the manifests name it before kustomize's `images:`
APP_IMAGE = "todo-events"
PACKAGES = ("web", "notifier", "streams")

Doc = dict[str, Any]
# the kubelet's dependent environment variables; `$$(VAR)` would escape one (not used in k8s/)
VARIABLE_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def load_yaml(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


@cache
def kustomization() -> Doc:
    return yaml.safe_load(KUSTOMIZATION.read_text(encoding="utf-8"))


def component_names() -> list[str]:
    """Every kustomize component under k8s/components/ (opt-in: none is listed in the base)."""
    return sorted(path.parent.name for path in COMPONENTS.glob("*/kustomization.yaml"))


@cache
def component(name: str) -> Doc:
    return yaml.safe_load((COMPONENTS / name / "kustomization.yaml").read_text(encoding="utf-8"))


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def apply_json_patch(doc: Doc, operations: list[Doc]) -> None:
    """RFC 6902 add, remove and replace, in place; a path that does not exist is an error, as in kustomize."""
    for operation in operations:
        *parents, last = _pointer(operation["path"])
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        op = operation["op"]
        if isinstance(node, list):
            if op == "add":
                node.insert(len(node) if last == "-" else int(last), copy.deepcopy(operation["value"]))
            elif op == "remove":
                del node[int(last)]
            else:
                assert op == "replace", op
                node[int(last)] = copy.deepcopy(operation["value"])
            continue
        if op in {"remove", "replace"} and last not in node:
            raise KeyError(f"{operation['path']}: no such field")
        if op == "remove":
            del node[last]
        else:
            assert op in {"add", "replace"}, op
            node[last] = copy.deepcopy(operation["value"])


def _targets(doc: Doc, target: Doc) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    wanted = {"group": group, "version": version, "kind": doc["kind"], "name": doc["metadata"]["name"]}
    return all(wanted[key] == value for key, value in target.items())


def _apply_component(docs: list[Doc], name: str) -> None:
    spec = component(name)
    assert spec["kind"] == "Component", name
    for resource in spec.get("resources", []):
        docs.extend(
            {**doc, "_source": f"components/{name}/{resource}"} for doc in load_yaml(COMPONENTS / name / resource)
        )
    for patch in spec.get("patches", []):
        text = patch["patch"] if "patch" in patch else (COMPONENTS / name / patch["path"]).read_text(encoding="utf-8")
        operations = yaml.safe_load(text)
        assert isinstance(operations, list), f"{name}: only JSON 6902 patches are understood"
        matched = [doc for doc in docs if _targets(doc, patch["target"])]
        assert matched, f"{name}: the patch target {patch['target']} selects nothing"
        for doc in matched:
            apply_json_patch(doc, operations)


def _apply_images(doc: Doc, images: list[Doc]) -> None:
    for container in pod_containers(doc):
        for image in images:
            if container["image"].split(":")[0] == image["name"]:
                container["image"] = f"{image.get('newName', image['name'])}:{image.get('newTag', 'latest')}"


def generated_config_maps() -> list[Doc]:
    """The ConfigMaps of `configMapGenerator`: one key per file (`key=path` or the file's name)."""
    docs = []
    for generator in kustomization().get("configMapGenerator", []):
        assert set(generator) <= UNDERSTOOD_GENERATOR_FIELDS, generator
        options = generator.get("options", {})
        assert set(options) <= UNDERSTOOD_GENERATOR_OPTIONS, options
        assert options.get("disableNameSuffixHash") is True, f"{generator['name']}: a hash suffix is not rendered here"
        data = {}
        for entry in generator["files"]:
            key, _, path = entry.rpartition("=")
            data[key or Path(path).name] = (K8S / path).read_text(encoding="utf-8")
        metadata: Doc = {"name": generator["name"]}
        if "labels" in options:
            metadata["labels"] = dict(options["labels"])
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    return docs


@cache
def _rendered(components: tuple[str, ...]) -> tuple[Doc, ...]:
    spec = kustomization()
    docs: list[Doc] = []
    for resource in spec["resources"]:
        docs += [{**copy.deepcopy(doc), "_source": resource} for doc in load_yaml(K8S / resource)]
    docs += [{**doc, "_source": "configMapGenerator"} for doc in generated_config_maps()]
    for path in components:
        _apply_component(docs, path.removeprefix("components/"))
    for doc in docs:
        metadata = doc.setdefault("metadata", {})
        if doc["kind"] != "Namespace":
            metadata["namespace"] = spec["namespace"]
        for label in spec.get("labels", []):
            metadata.setdefault("labels", {}).update(label["pairs"])
        _apply_images(doc, spec.get("images", []))
    return tuple(docs)


def rendered(*components: str) -> list[Doc]:
    """Every object `kubectl apply -k k8s/` creates (a fresh copy; `_source` names its file): with the
    components k8s/kustomization.yaml lists, or with those named here (e.g. "keda") instead."""
    chosen = components or tuple(kustomization().get("components") or ())
    return copy.deepcopy(list(_rendered(tuple(chosen))))


def without_source(doc: Doc) -> Doc:
    return {key: value for key, value in doc.items() if key != "_source"}


def find(kind: str, name: str, docs: list[Doc] | None = None) -> Doc:
    """The one object of that kind and name in `docs` (default: the kustomization as it is)."""
    matches = [doc for doc in (rendered() if docs is None else docs) if doc["kind"] == kind]
    matches = [doc for doc in matches if doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name} in the kustomization, found {len(matches)}"
    return matches[0]


def pod_spec(doc: Doc) -> Doc | None:
    if doc["kind"] in {"Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet"}:
        return doc["spec"]["template"]["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if doc["kind"] == "Pod":
        return doc["spec"]
    return None


def pod_containers(doc: Doc) -> list[Doc]:
    spec = pod_spec(doc)
    if spec is None:
        return []
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


@dataclass(frozen=True)
class Container:
    """One container of a workload in the kustomization."""

    workload: Doc
    spec: Doc

    @property
    def label(self) -> str:
        return f"{self.workload['kind']}/{self.workload['metadata']['name']}/{self.spec['name']}"

    @property
    def pod(self) -> Doc:
        spec = pod_spec(self.workload)
        assert spec is not None
        return spec

    @property
    def runs_app_image(self) -> bool:
        image = self.spec["image"]
        app_image = next((i for i in kustomization().get("images", []) if i["name"] == APP_IMAGE), None)
        names = {APP_IMAGE} | ({app_image.get("newName", APP_IMAGE)} if app_image else set())
        return image.rsplit(":", 1)[0] in names

    @property
    def is_init(self) -> bool:
        """An initContainer: runs to completion before the pod's containers start."""
        return self.spec["name"] in {c["name"] for c in self.pod.get("initContainers", [])}

    @property
    def command(self) -> list[str]:
        return [*self.spec.get("command", []), *self.spec.get("args", [])]

    @property
    def package(self) -> str:
        """The package whose process this container runs: from its console script or `python -m`."""
        command = self.command
        if command[:2] == ["python", "-m"]:
            return command[2].split(".")[0]
        target = console_scripts()[command[0]]
        return target.split(":")[0].split(".")[0]

    def env_names(self) -> set[str]:
        names = {item["name"] for item in self.spec.get("env", [])}
        for source in self.spec.get("envFrom", []):
            ref = source.get("configMapRef") or source.get("secretRef")
            kind = "ConfigMap" if "configMapRef" in source else "Secret"
            names |= {f"{source.get('prefix', '')}{key}" for key in data_keys(kind, ref["name"])}
        return names

    def env(self, name: str) -> Doc | None:
        return next((item for item in self.spec.get("env", []) if item["name"] == name), None)

    def env_value(self, name: str) -> str | None:
        """The value of an env var as the process sees it, following configMapKeyRef and expanding
        `$(VAR)` as the kubelet does, except that a secret stays `$(VAR)`; None when unset or secret."""
        item = self.env(name)
        if item is None:
            return None
        if "value" in item:
            earlier = self.spec["env"][: self.spec["env"].index(item)]

            def expand(match: re.Match[str]) -> str:
                if match[1] not in {e["name"] for e in earlier}:
                    return match[0]
                return self.env_value(match[1]) or match[0]

            return VARIABLE_REFERENCE.sub(expand, str(item["value"]))
        ref = item.get("valueFrom", {}).get("configMapKeyRef")
        if ref is None:
            return None
        return str(find("ConfigMap", ref["name"])["data"][ref["key"]])

    def references(self, name: str) -> set[str]:
        """The variables an env var's value names as `$(VAR)`."""
        item = self.env(name)
        return set(VARIABLE_REFERENCE.findall(str(item.get("value", "")))) if item else set()

    def referenced_only(self) -> set[str]:
        """Env vars set only to be expanded into another's value (a password into a URL)."""
        return {ref for item in self.spec.get("env", []) for ref in self.references(item["name"])}

    def secret_refs(self) -> set[tuple[str, str | None]]:
        """(Secret, key) of every secretKeyRef of the env, (Secret, None) of every envFrom secretRef."""
        refs: set[tuple[str, str | None]] = set()
        for item in self.spec.get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                refs.add((ref["name"], ref["key"]))
        refs |= {(s["secretRef"]["name"], None) for s in self.spec.get("envFrom", []) if "secretRef" in s}
        return refs

    def secret_ref(self, name: str) -> tuple[str, str] | None:
        """(Secret, key) an env var comes from; None when it is not from a Secret."""
        item = self.env(name)
        ref = (item or {}).get("valueFrom", {}).get("secretKeyRef")
        return None if ref is None else (ref["name"], ref["key"])

    def port_number(self, port: int | str) -> int:
        if isinstance(port, int):
            return port
        return next(p["containerPort"] for p in self.spec.get("ports", []) if p.get("name") == port)


def containers() -> Iterator[Container]:
    for doc in rendered():
        for spec in pod_containers(doc):
            yield Container(doc, spec)


def app_containers() -> list[Container]:
    return [container for container in containers() if container.runs_app_image]


def data_keys(kind: str, name: str) -> set[str]:
    """Keys of a ConfigMap in the kustomization, or of a Secret in secrets.example.yaml."""
    if kind == "ConfigMap":
        return set(find("ConfigMap", name).get("data", {}))
    secret = next(d for d in load_yaml(SECRETS_EXAMPLE) if d["kind"] == "Secret" and d["metadata"]["name"] == name)
    return set(secret.get("stringData", {})) | set(secret.get("data", {}))


@cache
def pyproject() -> Doc:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def console_scripts() -> dict[str, str]:
    return dict(pyproject()["project"]["scripts"])


def settings_classes(package: str) -> list[type[BaseSettings]]:
    """The settings a package's process reads: `<package>.settings.Settings`, and NatsSettings for streams."""
    if package == "streams":
        classes: list[type[BaseSettings]] = [NatsSettings]
        with contextlib.suppress(ModuleNotFoundError):
            classes.append(importlib.import_module("streams.settings").Settings)
        return classes
    return [importlib.import_module(f"{package}.settings").Settings]


def _aliases(cls: type[BaseSettings]) -> Iterator[tuple[str, bool, Any]]:
    """(env name, required, default) of every field, descending into nested settings models."""
    for field in cls.model_fields.values():
        alias = field.validation_alias
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseSettings) and alias is None:
            yield from _aliases(annotation)
            continue
        assert isinstance(alias, str), f"{cls.__name__}: a field without validation_alias ({field})"
        yield alias, field.is_required(), field.default


def settings_env(package: str) -> dict[str, tuple[bool, Any]]:
    """Env var name -> (required, default) for every setting the package's process reads."""
    env: dict[str, tuple[bool, Any]] = {}
    for cls in settings_classes(package):
        for alias, required, default in _aliases(cls):
            env.setdefault(alias, (required, default))
    return env


def _http_app(package: str) -> web.Application:
    """The aiohttp application the package's process serves, built as the process builds it (nothing started)."""
    if package == "web":
        from web.app import init_app  # noqa: PLC0415
        from web.settings import Settings  # noqa: PLC0415

        return init_app(Settings(DATABASE_URL="sqlite://var/unused.sqlite3", NATS_URL=None))
    if package == "notifier":
        from prometheus_client import CollectorRegistry  # noqa: PLC0415

        from notifier.health import make_app  # noqa: PLC0415

        return make_app(lambda: True, CollectorRegistry())
    raise ValueError(f"{package} serves no HTTP")


def served_routes(package: str) -> set[tuple[str, str]]:
    """(method, path) of every route registered on the router of the package's HTTP app."""
    return {
        (route.method, route.resource.canonical)
        for route in _http_app(package).router.routes()
        if route.resource is not None
    }
