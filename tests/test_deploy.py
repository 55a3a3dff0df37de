"""deploy/ manifests, validated (no Docker engine or cluster here to run them).

They must name only real settings, run every role from one image, share what every role
must share, enable the broker plugin the dispatcher shards need, and scale workers on the
queue the dispatcher really routes work to.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import yaml
from yarl import URL

from shared.cluster import node_urls
from shared.settings import Settings
from shared.topology import CONSISTENT_HASH, Topology
from shared.trigger_types import PROCESS_KINDS

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SETTINGS = {f"PYFC_{f.name.upper()}" for f in msgspec.structs.fields(Settings)}
# Service / Deployment name -> the pyfc command it runs: every role, one per trigger kind.
COMMANDS = {
    "gateway": ["gateway"],
    "dispatcher": ["dispatcher"],
    "worker": ["worker"],
    **{f"trigger-{kind}": ["trigger", kind] for kind in PROCESS_KINDS},
}
ROLES = set(COMMANDS)


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


def k8s() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "pyfc.yaml").read_text()) if d]


def test_compose_runs_every_role_from_one_image_with_real_settings() -> None:
    services = compose()["services"]
    roles = {name: svc for name, svc in services.items() if name in ROLES}
    assert set(roles) == ROLES
    for name, svc in roles.items():
        assert svc["command"] == COMMANDS[name]
        assert svc["image"] == "pyfc:latest"
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        env = svc["environment"]
        assert set(env) <= SETTINGS, set(env) - SETTINGS
        for shared in ("PYFC_AMQP_URL", "PYFC_DATABASE_URL", "PYFC_BLOB_URL", "PYFC_SECRET"):
            assert env[shared] == roles["gateway"]["environment"][shared], (name, shared)
    # Settings parse (types, URLs) as each role would read them.
    for svc in roles.values():
        values = {k: str(v) for k, v in svc["environment"].items()}
        values["PYFC_SECRET"] = "x" * 40
        Settings.from_env(values)
    assert roles["dispatcher"]["deploy"]["replicas"] >= 2  # failover needs a standby
    for kind in PROCESS_KINDS:  # trigger processes run replicated (exactly once across them)
        assert roles[f"trigger-{kind}"]["deploy"]["replicas"] >= 2


BROKER_NODES = ["rabbitmq-0", "rabbitmq-1", "rabbitmq-2"]
PLUGIN = CONSISTENT_HASH.removeprefix("x-").replace("-", "_")


def test_compose_broker_has_the_plugin_the_dispatcher_shards_need() -> None:
    services = compose()["services"]
    for node in BROKER_NODES:
        mounts = services[node]["volumes"]
        plugins_file = next(m.split(":")[0] for m in mounts if "enabled_plugins" in m)
        plugins = (DEPLOY / plugins_file).read_text()
        assert PLUGIN in plugins
        assert re.fullmatch(r"\[[a-z_,]+\]\.\s*", plugins), plugins  # Erlang term syntax


def test_compose_runs_pyfc_on_a_three_node_cluster_with_quorum_queues() -> None:
    """Three nodes, one cookie, each its own disk, clustered by the config every node
    mounts (pause_minority); every role lists every node and declares quorum queues."""
    services = compose()["services"]
    nodes = [services[node] for node in BROKER_NODES]
    assert [n["hostname"] for n in nodes] == BROKER_NODES
    assert len({n["environment"]["RABBITMQ_ERLANG_COOKIE"] for n in nodes}) == 1
    assert nodes[0]["environment"]["RABBITMQ_ERLANG_COOKIE"].startswith("${")
    disks = [next(m for m in n["volumes"] if m.endswith(":/var/lib/rabbitmq")) for n in nodes]
    assert len(set(disks)) == 3, disks
    for node in nodes:
        conf_mount = next(m for m in node["volumes"] if "/etc/rabbitmq/conf.d/" in m)
        conf = (DEPLOY / conf_mount.split(":")[0]).read_text()
        peers = re.findall(r"classic_config\.nodes\.\d+ = rabbit@(\S+)", conf)
        assert peers == BROKER_NODES
        assert re.search(r"^cluster_partition_handling = pause_minority$", conf, re.M)
        assert re.search(r"^queue_leader_locator = balanced$", conf, re.M)
    for name in ROLES:
        env = services[name]["environment"]
        value = re.sub(r"\$\{[^}]*\}", "pw", env["PYFC_AMQP_URL"])  # as compose fills it
        hosts = [URL(url).host for url in node_urls(value)]
        assert hosts == BROKER_NODES, (name, hosts)
        assert env["PYFC_QUEUE_TYPE"] == "quorum"
        assert set(BROKER_NODES) <= set(services[name]["depends_on"]), name


def k8s_broker() -> dict[str, Any]:
    (cluster,) = [
        d for d in yaml.safe_load_all((DEPLOY / "k8s" / "rabbitmq.yaml").read_text()) if d
    ]
    return cluster  # type: ignore[no-any-return]


def test_k8s_runs_pyfc_on_a_three_node_cluster_with_quorum_queues() -> None:
    cluster = k8s_broker()
    assert cluster["kind"] == "RabbitmqCluster"
    spec = cluster["spec"]
    assert spec["replicas"] == 3
    assert f"rabbitmq_{PLUGIN}_exchange" in spec["rabbitmq"]["additionalPlugins"]
    conf = spec["rabbitmq"]["additionalConfig"]
    assert "cluster_partition_handling = pause_minority" in conf
    assert "queue_leader_locator = balanced" in conf
    anti = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    config = next(d for d in k8s() if d["kind"] == "ConfigMap")["data"]
    assert config["PYFC_QUEUE_TYPE"] == "quorum"
    # The Secret's PYFC_AMQP_URL (made by the operator as the header shows) names every
    # pod of the cluster by its stable DNS name.
    header = (DEPLOY / "k8s" / "pyfc.yaml").read_text()
    name, namespace = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    command = next(line for line in header.splitlines() if "PYFC_AMQP_URL=" in line)
    assert f"@{name}-server-%s.{name}-nodes.{namespace}:5672/" in command
    assert "for i in 0 1 2" in command


def test_dockerfile_copies_every_package_and_runs_the_cli() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for package in ("shared", "gateway", "dispatcher", "worker", "triggers", "pyfc"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert 'ENTRYPOINT ["pyfc"]' in dockerfile


def test_k8s_roles_settings_probes_and_worker_scaling() -> None:
    docs = k8s()
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    config = by_kind["ConfigMap"][0]["data"]
    assert set(config) <= SETTINGS
    assert "Secret" not in by_kind  # made from the operator's values (no fixed passwords)
    deployments = {d["metadata"]["name"]: d for d in by_kind["Deployment"]}
    assert set(deployments) == ROLES
    for name, dep in deployments.items():
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        assert container["args"] == COMMANDS[name]
        assert {e["name"] for e in container.get("env", [])} <= SETTINGS
        refs = {next(iter(r.values()))["name"] for r in container["envFrom"]}
        assert refs == {"pyfc"}
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"] == labels
    gateway = deployments["gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert deployments["dispatcher"]["spec"]["replicas"] >= 2
    for kind in PROCESS_KINDS:
        assert deployments[f"trigger-{kind}"]["spec"]["replicas"] >= 2
    (scaled,) = by_kind["ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "worker"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["metadata"]["queueName"] == Topology(config["PYFC_NAMESPACE"]).work_queue


def test_workers_may_finish_running_work_before_the_orchestrator_kills_them() -> None:
    """A SIGTERMed worker lets running work finish for PYFC_WORKER_STOP_GRACE_SECONDS; the
    orchestrator must wait longer than that before it SIGKILLs."""
    service = compose()["services"]["worker"]
    grace = float(service["environment"]["PYFC_WORKER_STOP_GRACE_SECONDS"])
    assert grace < float(service["stop_grace_period"].removesuffix("s"))
    (worker,) = [
        d for d in k8s() if d["kind"] == "Deployment" and d["metadata"]["name"] == "worker"
    ]
    pod = worker["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert float(env["PYFC_WORKER_STOP_GRACE_SECONDS"]) < pod["terminationGracePeriodSeconds"]


def _passwords(value: object, where: str) -> list[tuple[str, str]]:
    """Every password-like string under `value`: URL passwords, secret_key=..., and the
    values of keys naming a password or secret."""
    found: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str) and re.search(r"PASS|SECRET|TOKEN", str(key)):
                found.append((f"{where}.{key}", item))
            found += _passwords(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _passwords(item, f"{where}[{i}]")
    elif isinstance(value, str):
        found += [(where, m) for m in re.findall(r"://[^:/@\s]+:([^@\s]+)@", value)]
        found += [(where, m) for m in re.findall(r"secret_key=([^&\s]+)", value)]
    return found


def test_no_fixed_passwords_in_the_manifests() -> None:
    """Passwords come from the operator: compose interpolates required variables
    (`${NAME:?...}`), Kubernetes reads a Secret the operator creates."""
    found = _passwords(compose(), "compose")
    assert found, "the check finds the compose file's passwords"
    fixed = [(where, v) for where, v in found if v and not v.startswith("${")]
    assert fixed == [], fixed
    for doc in k8s():
        assert doc["kind"] != "Secret"
        fixed = [(w, v) for w, v in _passwords(doc, doc["kind"]) if v]
        assert fixed == [], fixed


def test_workers_may_install_the_instance_network_policy() -> None:
    assert "NET_ADMIN" in compose()["services"]["worker"]["cap_add"]
    (worker,) = [
        d for d in k8s() if d["kind"] == "Deployment" and d["metadata"]["name"] == "worker"
    ]
    context = worker["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert context["runAsUser"] == 0 and "NET_ADMIN" in context["capabilities"]["add"]
    assert "nftables" in (DEPLOY / "Dockerfile").read_text()
