"""Least privilege: no container runs as root or privileged, all are bounded, no secret value is
committed; each component has its own PostgreSQL role or NATS user, and the network lets each pod
reach, and be reached from, only what it needs."""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

import pytest

from streams.permissions import IDENTITIES, password_variable
from tests.k8s.manifests import (
    K8S,
    ROOT,
    SECRETS_EXAMPLE,
    Container,
    containers,
    data_keys,
    find,
    kustomization,
    load_yaml,
    pod_spec,
    rendered,
    served_routes,
)
from tests.k8s.policies import (
    ANY,
    NATS_BOX_LABELS,
    NATS_SERVER_LABELS,
    Allowed,
    allowed,
    network_policies,
    peer_key,
    pod_labels,
    selects,
)
from tests.k8s.test_nats_chart import nats_container
from tests.k8s.test_nats_chart import values as nats_values

ALL = list(containers())
IDS = [c.label for c in ALL]
# a Telegram bot token: <bot id>:<35 characters>
TELEGRAM_TOKEN = re.compile(r"\d{8,10}:[A-Za-z0-9_-]{35}")
OWNED = [
    "Dockerfile",
    ".dockerignore",
    "k8s",
    "docs/kubernetes.md",
    "tests/k8s",
    "requirements.lock",
    "requirements-build.lock",
]


def _effective(container: Container, key: str) -> object:
    """A securityContext field as Kubernetes resolves it: the container's, else the pod's."""
    own = container.spec.get("securityContext", {})
    if key in own:
        return own[key]
    return container.pod.get("securityContext", {}).get(key)


@pytest.mark.parametrize("container", ALL, ids=IDS)
def test_container_runs_as_non_root(container: Container):
    assert _effective(container, "runAsNonRoot") is True
    user = _effective(container, "runAsUser")
    assert isinstance(user, int)
    assert user > 0


@pytest.mark.parametrize("container", ALL, ids=IDS)
def test_container_is_not_privileged_and_drops_all_capabilities(container: Container):
    context = container.spec.get("securityContext", {})
    assert context.get("privileged", False) is False
    assert context.get("allowPrivilegeEscalation") is False
    assert context.get("capabilities", {}).get("drop") == ["ALL"]
    assert not context.get("capabilities", {}).get("add")
    assert _effective(container, "seccompProfile") == {"type": "RuntimeDefault"}
    pod = container.pod
    assert not pod.get("hostNetwork")
    assert not pod.get("hostPID")
    assert not pod.get("hostIPC")
    assert pod.get("automountServiceAccountToken") is False


@pytest.mark.parametrize("container", ALL, ids=IDS)
def test_container_has_read_only_root_filesystem(container: Container):
    """Writes go to emptyDir volumes (/tmp, the PostgreSQL socket dir) or a PVC, never the image."""
    assert container.spec["securityContext"].get("readOnlyRootFilesystem") is True
    mounts = {m["mountPath"] for m in container.spec.get("volumeMounts", [])}
    assert "/tmp" in mounts


@pytest.mark.parametrize("container", ALL, ids=IDS)
def test_container_has_requests_and_limits(container: Container):
    resources = container.spec["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert {"cpu", "memory"} <= set(resources["limits"])


@pytest.mark.parametrize("container", ALL, ids=IDS)
def test_images_are_pinned(container: Container):
    image = container.spec["image"]
    assert ":" in image.rsplit("/", 1)[-1]
    assert not image.endswith(":latest")


def test_no_secret_object_is_applied_by_the_kustomization():
    """Real Secrets are created with kubectl (docs); the kustomization ships none."""
    assert [d for d in rendered() if d["kind"] == "Secret"] == []


def test_example_secrets_hold_only_placeholders():
    placeholder = re.compile(r"CHANGE-ME|^todos$")
    for secret in load_yaml(SECRETS_EXAMPLE):
        assert "data" not in secret, "base64 data hides what is committed: use stringData"
        for key, value in secret["stringData"].items():
            credential = key.upper().endswith(("PASSWORD", "TOKEN", "_URL", "CHAT_ID"))
            assert ("CHANGE-ME" in value) if credential else placeholder.search(value), f"{key}: {value}"


def test_no_telegram_token_in_owned_files():
    files = [ROOT / "Dockerfile", ROOT / ".dockerignore"]
    for name in OWNED[2:]:
        path = ROOT / name
        files += (
            [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        )
    assert len(files) > 10
    for path in files:
        assert not TELEGRAM_TOKEN.search(path.read_text(encoding="utf-8")), path


def test_token_pattern_matches_a_token_shape():
    """The pattern above finds a token-shaped string (built here so no file holds one)."""
    fake = "1234567890:" + "A" * 35
    assert TELEGRAM_TOKEN.search(f"token: {fake}")


# --- least privilege: PostgreSQL roles -------------------------------------------------------------

ROLES_SQL = K8S / "postgres-roles.sql"
ROLES_SCRIPT = K8S / "postgres-roles.sh"
INITDB = "/docker-entrypoint-initdb.d"
OWNER_ROLE, APP_ROLE = "todos_owner", "todos_app"
SUPERUSER_SECRET, OWNER_SECRET, APP_SECRET = "todo-db", "todo-db-owner", "todo-db-app"


def _container(label: str) -> Container:
    (found,) = [c for c in ALL if c.label == label]
    return found


POSTGRES = _container("StatefulSet/postgres/postgres")
WEB = _container("Deployment/web/web")
MIGRATE = _container("Deployment/web/migrate")


def _initdb_files() -> dict[str, str]:
    """Path under /docker-entrypoint-initdb.d -> ConfigMap key, as the postgres container sees them."""
    (mount,) = [m for m in POSTGRES.spec["volumeMounts"] if m["mountPath"] == INITDB]
    (volume,) = [v for v in POSTGRES.pod["volumes"] if v["name"] == mount["name"]]
    source = volume["configMap"]
    keys = find("ConfigMap", source["name"])["data"]
    items = source.get("items") or [{"key": key, "path": key} for key in keys]
    assert {item["key"] for item in items} <= set(keys)
    return {item["path"]: item["key"] for item in items}


def _psql_variables(text: str) -> set[str]:
    """The psql variables a script interpolates (:'name', :"name")."""
    return set(re.findall(r":['\"]([a-z_]+)['\"]", text))


def _run_roles_script(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """postgres-roles.sh sourced as the image's entrypoint sources it (bash, set -Eeo pipefail), with a
    `psql` on PATH that prints its arguments, one a line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "psql"
    fake.write_text('#!/bin/sh\nfor arg; do printf "%s\\n" "$arg"; done\n', encoding="utf-8")
    fake.chmod(0o755)
    bash = shutil.which("bash")
    assert bash is not None
    return subprocess.run(
        [bash, "-c", f'set -Eeo pipefail; . "{ROLES_SCRIPT}"; echo entrypoint-continues'],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_postgres_mounts_the_generated_roles_scripts_in_initdb():
    """The ConfigMap from configMapGenerator holds both files as committed; the image runs the script,
    and finds no top-level *.sql (it would run that one itself, without the psql variables)."""
    config_map = find("ConfigMap", "postgres-initdb")
    generator = next(g for g in kustomization()["configMapGenerator"] if g["name"] == "postgres-initdb")
    assert set(generator["files"]) == {ROLES_SCRIPT.name, ROLES_SQL.name}
    assert config_map["data"][ROLES_SCRIPT.name] == ROLES_SCRIPT.read_text(encoding="utf-8")
    assert config_map["data"][ROLES_SQL.name] == ROLES_SQL.read_text(encoding="utf-8")
    files = _initdb_files()
    top_level = {path for path in files if "/" not in path}
    assert top_level == {path for path, key in files.items() if key == ROLES_SCRIPT.name}
    assert all(path.endswith(".sh") for path in top_level)
    assert ROLES_SQL.name in files.values()


def test_roles_script_gives_psql_every_variable_of_the_sql(tmp_path):
    result = _run_roles_script(
        tmp_path,
        POSTGRES_USER="superuser",
        POSTGRES_DB="todos",
        POSTGRES_OWNER_PASSWORD="owner-secret",
        POSTGRES_APP_PASSWORD="app-secret",
    )
    assert result.returncode == 0, result.stderr
    *args, last = result.stdout.splitlines()
    assert last == "entrypoint-continues", "a sourced script must not exit the entrypoint"
    given = {arg.split("=", 1)[0]: arg.split("=", 1)[1] for arg in args if re.fullmatch(r"[a-z_]+=.*", arg)}
    assert given == {"owner_password": "owner-secret", "app_password": "app-secret", "database": "todos"}
    assert _psql_variables(ROLES_SQL.read_text(encoding="utf-8")) == set(given)
    assert args[args.index("--username") + 1] == "superuser"
    assert "ON_ERROR_STOP=1" in args
    sql_path = args[args.index("-f") + 1]
    assert _initdb_files()[sql_path.removeprefix(f"{INITDB}/")] == ROLES_SQL.name, "runs the mounted SQL"


def test_roles_script_stops_the_init_without_a_password(tmp_path):
    """A missing Secret key fails the first start loudly instead of creating roles without passwords."""
    result = _run_roles_script(tmp_path, POSTGRES_USER="superuser", POSTGRES_DB="todos", POSTGRES_OWNER_PASSWORD="x")
    assert result.returncode != 0
    assert "POSTGRES_APP_PASSWORD" in result.stderr
    assert "entrypoint-continues" not in result.stdout


def test_postgres_gets_the_role_passwords_from_their_secrets():
    variables = set(re.findall(r"\$\{?([A-Z_]+)", ROLES_SCRIPT.read_text(encoding="utf-8")))
    assert variables <= POSTGRES.env_names()
    assert POSTGRES.secret_ref("POSTGRES_OWNER_PASSWORD") == (OWNER_SECRET, "password")
    assert POSTGRES.secret_ref("POSTGRES_APP_PASSWORD") == (APP_SECRET, "password")
    assert POSTGRES.secret_ref("POSTGRES_PASSWORD") == (SUPERUSER_SECRET, "POSTGRES_PASSWORD")
    sql = ROLES_SQL.read_text(encoding="utf-8")
    assert f"CREATE ROLE {OWNER_ROLE} LOGIN" in sql
    assert f"CREATE ROLE {APP_ROLE} LOGIN" in sql


def test_postgres_documents_the_one_off_run_on_an_existing_database():
    """initdb scripts never run on a volume that holds a database: the comment gives the command."""
    text = (K8S / "postgres.yaml").read_text(encoding="utf-8")
    (command,) = re.findall(r"kubectl -n (\S+) exec (\S+) -c (\S+) -- sh (\S+)", text)
    namespace, pod, container, script = command
    assert namespace == kustomization()["namespace"]
    assert pod == f"{find('StatefulSet', 'postgres')['metadata']['name']}-0"
    assert container == POSTGRES.spec["name"]
    assert _initdb_files()[script.removeprefix(f"{INITDB}/")] == ROLES_SCRIPT.name


def test_only_postgres_reads_the_superuser_secret():
    readers = {c.label for c in ALL if any(secret == SUPERUSER_SECRET for secret, _ in c.secret_refs())}
    assert readers == {POSTGRES.label}


# --- least privilege: the API as todos_app, migrations as todos_owner ---------------------------------


def _database_url(container: Container, name: str) -> SplitResult:
    return urlsplit(container.env_value(name) or "")


def _password_secret(container: Container, url: SplitResult) -> tuple[str, str] | None:
    """The Secret a URL's password comes from, when it is `$(VAR)` of a variable from a Secret."""
    match = re.fullmatch(r"\$\((\w+)\)", url.password or "")
    return container.secret_ref(match[1]) if match else None


def test_only_the_migrate_init_container_has_the_migration_url():
    assert MIGRATE.is_init
    assert MIGRATE.command == ["python", "-m", "web", "migrate"]
    assert {c.label for c in ALL if "DATABASE_MIGRATION_URL" in c.env_names()} == {MIGRATE.label}
    readers = {c.label for c in ALL if any(secret == OWNER_SECRET for secret, _ in c.secret_refs())}
    assert readers == {MIGRATE.label, POSTGRES.label}


def test_api_connects_as_the_app_role_and_never_sees_the_owner():
    url = _database_url(WEB, "DATABASE_URL")
    assert url.username == APP_ROLE
    assert _password_secret(WEB, url) == (APP_SECRET, "password")
    assert {secret for secret, _ in WEB.secret_refs()}.isdisjoint({OWNER_SECRET, SUPERUSER_SECRET})
    assert "DATABASE_MIGRATION_URL" not in WEB.env_names()
    assert not WEB.spec.get("envFrom"), "envFrom would hand the container a whole Secret"


def test_migrations_run_as_the_owner_on_the_api_database():
    url = _database_url(MIGRATE, "DATABASE_MIGRATION_URL")
    api = _database_url(WEB, "DATABASE_URL")
    assert url.username == OWNER_ROLE
    assert _password_secret(MIGRATE, url) == (OWNER_SECRET, "password")
    assert (url.scheme, url.hostname, url.port, url.path) == (api.scheme, api.hostname, api.port, api.path)
    service = find("Service", "postgres")
    assert api.hostname == f"{service['metadata']['name']}.{kustomization()['namespace']}.svc"
    assert api.port == service["spec"]["ports"][0]["port"]
    database = next(s for s in load_yaml(SECRETS_EXAMPLE) if s["metadata"]["name"] == SUPERUSER_SECRET)
    assert api.path == f"/{database['stringData']['POSTGRES_DB']}"
    assert not [name for name in MIGRATE.env_names() if name.startswith("NATS_")], "migrations need no NATS"


def test_migrate_runs_like_the_api_container():
    """Same image and securityContext as the API it prepares, bounded like every container."""
    assert MIGRATE.spec["image"] == WEB.spec["image"]
    assert MIGRATE.spec["securityContext"] == WEB.spec["securityContext"]
    assert MIGRATE.spec["resources"]["limits"]


# --- least privilege: NATS users --------------------------------------------------------------------

# NATS user -> (workload, its Secret); the NATS servers read the same Secrets (k8s/nats-values.yaml)
NATS_USERS = {
    "web": ("Deployment/web", "nats-web"),
    "notifier": ("Deployment/notifier", "nats-notifier"),
    "streams": ("Job/streams-bootstrap", "nats-streams"),
}


@pytest.mark.parametrize("user", NATS_USERS)
def test_each_nats_client_connects_as_its_own_user(user: str):
    workload, secret = NATS_USERS[user]
    clients = [c for c in ALL if c.label.startswith(f"{workload}/") and not c.is_init]
    assert clients
    for client in clients:
        url = urlsplit(client.env_value("NATS_URL") or "")
        assert url.username == user, client.label
        assert _password_secret(client, url) == (secret, "password"), client.label
        nats_secrets = {name for name, _ in client.secret_refs() if name.startswith("nats-")}
        assert nats_secrets == {secret}, f"{client.label} reads another NATS user's Secret"
    assert "password" in data_keys("Secret", secret)


def test_every_nats_url_names_a_user():
    """No container connects to NATS anonymously (the servers would refuse it anyway)."""
    for container in ALL:
        if "NATS_URL" in container.env_names():
            assert urlsplit(container.env_value("NATS_URL") or "").username in NATS_USERS, container.label


def test_no_config_map_holds_a_credential():
    credential_key = re.compile(r"PASSWORD|TOKEN|SECRET|CREDS", re.IGNORECASE)
    url_with_password = re.compile(r"\w+://[^/\s:@]+:[^/\s@]+@")
    for config_map in (d for d in rendered() if d["kind"] == "ConfigMap"):
        for key, value in config_map.get("data", {}).items():
            assert not credential_key.search(key), f"{config_map['metadata']['name']}: {key}"
            assert not url_with_password.search(value), f"{config_map['metadata']['name']}: {key}"


def test_example_secrets_are_the_ones_the_pods_read():
    """Every Secret a container reads (the NATS servers' included) is in the example, with its keys,
    and the example holds no Secret that nothing reads any more."""
    nats_server_refs = {
        (ref["name"], ref["key"])
        for item in nats_container()["env"]
        if (ref := item.get("valueFrom", {}).get("secretKeyRef")) is not None
    }
    refs = {ref for container in ALL for ref in container.secret_refs()} | nats_server_refs
    for secret, key in refs:
        assert key in data_keys("Secret", secret), f"{secret}/{key}"
    example = {doc["metadata"]["name"] for doc in load_yaml(SECRETS_EXAMPLE)}
    assert example == {secret for secret, _ in refs}


def test_nats_servers_check_each_password_against_the_clients_secret():
    """The users are those of streams.permissions, and the NATS container (k8s/nats-values.yaml,
    container.env) reads each one's password from the Secret its client reads."""
    assert {identity.user for identity in IDENTITIES} == set(NATS_USERS)
    env = {item["name"]: item for item in nats_container()["env"]}
    for user, (_, secret) in NATS_USERS.items():
        source = env[password_variable(user)].get("valueFrom", {}).get("secretKeyRef")
        assert source == {"name": secret, "key": "password"}, user


# --- least privilege: NetworkPolicies ---------------------------------------------------------------

BASE = rendered()
PROMETHEUS = peer_key(
    {
        "namespaceSelector": {"matchLabels": {"todo-events.io/monitoring": "true"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
)
KUBE_DNS = peer_key(
    {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    }
)
DNS = {Allowed(KUBE_DNS, 53, "UDP"), Allowed(KUBE_DNS, 53, "TCP")}
NATS_SERVERS = peer_key({"podSelector": {"matchLabels": NATS_SERVER_LABELS}})
# a private, link-local or shared address: never Telegram
INTERNAL = ["10.96.0.1", "172.16.0.10", "192.168.1.1", "169.254.169.254", "100.64.0.1"]
TELEGRAM = "149.154.167.220"


def _labels(kind: str, name: str) -> dict[str, str]:
    return pod_labels(find(kind, name, BASE))


def _workload_peer(kind: str, name: str) -> str:
    return peer_key({"podSelector": {"matchLabels": _labels(kind, name)}})


def _metrics_port(container: Container, setting: str) -> int:
    """The port of the container's `/metrics`: the one its port setting names."""
    assert ("GET", "/metrics") in served_routes(container.package)
    return int(container.env_value(setting) or 0)


def test_prometheus_scrapes_the_metrics_ports_and_nothing_else():
    """From its pods in the labelled namespace (one peer, both selectors) to web's and the notifier's
    metrics ports and the NATS monitor port; to nothing else, and no rule names that namespace alone."""
    notifier = _container("Deployment/notifier/notifier")
    expected = {
        "web": (_labels("Deployment", "web"), _metrics_port(WEB, "PORT")),
        "notifier": (_labels("Deployment", "notifier"), _metrics_port(notifier, "NOTIFIER_PORT")),
        "nats": (NATS_SERVER_LABELS, nats_values()["config"]["monitor"]["port"]),
    }
    for name, (labels, port) in expected.items():
        ingress = allowed(BASE, labels, "ingress") or set()
        assert {(a.port, a.protocol) for a in ingress if a.peer == PROMETHEUS} == {(port, "TCP")}, name
        assert ANY not in {a.peer for a in ingress}, f"{name}: a rule open to every peer"
    scraped = {
        d["metadata"]["name"]
        for d in BASE
        if pod_spec(d) is not None and any(a.peer == PROMETHEUS for a in allowed(BASE, pod_labels(d), "ingress") or ())
    }
    assert scraped == {"web", "notifier"}
    for policy in network_policies(BASE):
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "todo-events.io/monitoring" in peer.get("namespaceSelector", {}).get("matchLabels", {}):
                    assert peer_key(peer) == PROMETHEUS, policy["metadata"]["name"]


def test_monitoring_labels_are_documented():
    text = (K8S / "networkpolicies.yaml").read_text(encoding="utf-8")
    assert "kubectl label namespace monitoring todo-events.io/monitoring=true" in text
    assert "`app.kubernetes.io/name: prometheus`" in text


def test_notifier_https_egress_is_public_addresses_only():
    egress = allowed(BASE, _labels("Deployment", "notifier"), "egress")
    assert egress is not None
    https = [a for a in egress if a.port == 443]
    (rule,) = https
    block = json.loads(rule.peer)["ipBlock"]
    assert block["cidr"] == "0.0.0.0/0"
    excluded = [ipaddress.ip_network(cidr) for cidr in block["except"]]
    for address in INTERNAL:
        assert any(ipaddress.ip_address(address) in network for network in excluded), address
    assert not any(ipaddress.ip_address(TELEGRAM) in network for network in excluded)
    assert egress - set(https) == {Allowed(NATS_SERVERS, 4222, "TCP"), *DNS}


def test_web_pod_egress_is_postgres_nats_and_dns_only():
    """The API and its initContainer `migrate` (same pod, same policy) reach nothing else."""
    assert MIGRATE.workload is WEB.workload
    egress = allowed(BASE, _labels("Deployment", "web"), "egress")
    postgres_port = POSTGRES.port_number("postgres")
    assert egress == {
        Allowed(_workload_peer("StatefulSet", "postgres"), postgres_port, "TCP"),
        Allowed(NATS_SERVERS, 4222, "TCP"),
        *DNS,
    }


def test_postgres_admits_only_the_api_and_reaches_nothing():
    labels = _labels("StatefulSet", "postgres")
    assert allowed(BASE, labels, "ingress") == {
        Allowed(_workload_peer("Deployment", "web"), POSTGRES.port_number("postgres"), "TCP")
    }
    assert allowed(BASE, labels, "egress") == set()


def test_nats_admits_clients_routes_and_monitoring_from_their_own_peers_only():
    ingress = allowed(BASE, NATS_SERVER_LABELS, "ingress")
    assert ingress is not None
    by_port: dict[int | str, set[str]] = {}
    for rule in ingress:
        assert rule.protocol == "TCP"
        by_port.setdefault(rule.port, set()).add(rule.peer)
    assert set(by_port) == {4222, 6222, 8222}
    nats_box = peer_key({"podSelector": {"matchLabels": NATS_BOX_LABELS}})
    assert nats_box in by_port[4222], "the release's nats-box (the `nats` CLI) is a client too"
    app_peers = [json.loads(peer) for peer in by_port[4222] - {nats_box}]
    assert all(set(peer) == {"podSelector"} for peer in app_peers), "pods of this namespace only"
    workloads = [d for d in BASE if pod_spec(d) is not None]
    clients = {
        d["metadata"]["name"] for d in workloads if any(selects(p["podSelector"], pod_labels(d)) for p in app_peers)
    }
    assert clients == {"web", "notifier", "streams-bootstrap"}
    assert by_port[6222] == {NATS_SERVERS}, "cluster routes only between the NATS servers"
    keda = peer_key({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}})
    assert by_port[8222] == {keda, PROMETHEUS}
