"""deploy/kubernetes/: both overlays build with the real kubectl kustomize, the core kinds pass kubernetes-validate
--strict, and the built output says what the deployment promises — every request crosses the proxy, the legacy
service is loopback-only, the proxy's own parser accepts its arguments, the admin port is for the monitoring
namespace, the token comes from a Secret, the shutdown timings add up — and the PrometheusRule is the rules file."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML (a kubernetes-validate dependency) ships no types

from proxy.app.settings import OPTIONS, Settings, load_settings
from proxy.catalog.stages import parse_catalog
from tests.support.proxies import REPO
from tools.shared.errors import CommandError
from tools.stagectl import build_parser as stagectl_parser

KUBE = REPO / "deploy" / "kubernetes"
RULES = REPO / "observability" / "prometheus" / "rules" / "stage-validation.yml"
GENERATOR = REPO / "scripts" / "gen-prometheusrule"
PROMRULE = KUBE / "components" / "prometheus-operator" / "prometheusrule.yaml"
# The oldest Kubernetes the manifests target (the preStop sleep action is on by default from 1.30) and a newer one;
# both are bundled with kubernetes-validate (offline).
KUBERNETES_VERSIONS = ("1.30.0", "1.34.0")
CRD_GROUPS = ("monitoring.coreos.com/",)
MONITORING_NAMESPACE = {"kubernetes.io/metadata.name": "monitoring"}
TEST_TOKEN = "token-from-the-secret"
PRODUCTION_REDIS_URL = "rediss://:pw@redis.example:6380/0"  # the out-of-band Secret's stand-in


def tool(name: str) -> str:
    path = shutil.which(name) or (shutil.which(name, path=str(Path(sys.executable).parent)))
    if path is None:
        raise RuntimeError(f"{name} is not installed: scripts/test installs it (kubectl: Debian kubernetes-client; "
                           "kubernetes-validate: the venv's test extras)")
    return path


def kubectl() -> str:
    """kubectl, with a kustomize that knows components (v3.7+; Debian 12's kubernetes-client 1.20 has v2.0.3)."""
    path = tool("kubectl")
    done = subprocess.run([path, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30)
    found = re.match(r"v?(\d+)", str(json.loads(done.stdout or "{}").get("kustomizeVersion", "")))
    if found is None or int(found.group(1)) < 4:
        raise RuntimeError(f"{path}: kubectl kustomize is too old for deploy/kubernetes (components need kustomize "
                           f"v3.7+, kubectl 1.21+): {done.stdout or done.stderr}")
    return path


def kustomize(directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {directory}:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@dataclass(frozen=True)
class Build:
    name: str
    docs: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        found = [doc for doc in self.all(kind) if doc["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind} {name}, found {len(found)}"
        return found[0]

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment", "stagegate")

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.deployment["spec"]["template"]["spec"]
        return spec

    def container(self, name: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = [c for c in self.pod["containers"] if c["name"] == name]
        assert len(found) == 1, f"{self.name}: container {name}"
        return found[0]

    @property
    def proxy(self) -> dict[str, Any]:
        return self.container("stage-proxy")

    @property
    def legacy(self) -> dict[str, Any]:
        return self.container("legacy")

    def volume(self, name: str) -> dict[str, Any]:
        return next(v for v in self.pod["volumes"] if v["name"] == name)


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Build]:
    """staging, production, and staging with components/live-reload (a kustomization in a temporary directory:
    kustomize wants the paths relative)."""
    variant = tmp_path_factory.mktemp("live-reload")
    rel = Path(os.path.relpath(KUBE, variant))
    (variant / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{rel / 'overlays' / 'staging'}]\ncomponents: [{rel / 'components' / 'live-reload'}]\n")
    return {"staging": Build("staging", kustomize(KUBE / "overlays" / "staging")),
            "production": Build("production", kustomize(KUBE / "overlays" / "production")),
            "live-reload": Build("live-reload", kustomize(variant))}


VARIANTS = ("staging", "production", "live-reload")


@pytest.fixture(params=VARIANTS)
def build(request: pytest.FixtureRequest, builds: dict[str, Build]) -> Build:
    return builds[request.param]


# -- the proxy's arguments, through its own settings loader --------------------------------------------------


def flag_value(args: list[str], flag: str) -> str:
    """The value of ``--flag=value`` or ``--flag value`` in a container's args."""
    for index, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag:
            return args[index + 1]
    raise AssertionError(f"{flag} is not in {args}")


def mount_of(build: Build, container: dict[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volumeMount, volume) holding ``path`` in the container."""
    for mount in container.get("volumeMounts", []):
        if PurePosixPath(path).is_relative_to(mount["mountPath"]):
            return mount, build.volume(mount["name"])
    raise AssertionError(f"{build.name}: {path} is on no volume of {container['name']}")


def secret_value(build: Build, name: str, key: str, stand_in: str) -> str:
    """A Secret's value when the overlay generates it; ``stand_in`` for one created out of band."""
    generated = [s for s in build.all("Secret") if s["metadata"]["name"] == name]
    if not generated:
        return stand_in
    return base64.b64decode(generated[0]["data"][key]).decode()


def lay_out_volumes(build: Build, root: Path) -> dict[str, Path]:
    """Each volume of stage-proxy as a directory under ``root`` with the files Kubernetes would put there."""
    where: dict[str, Path] = {}
    for mount in build.proxy["volumeMounts"]:
        assert "subPath" not in mount, f"{build.name}: subPath mounts are never updated by the kubelet"
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True)
        volume = build.volume(mount["name"])
        if "configMap" in volume:
            config_map = build.one("ConfigMap", volume["configMap"]["name"])
            for key, text in config_map["data"].items():
                (target / key).write_text(text, encoding="utf-8")
        elif "secret" in volume:
            for item in volume["secret"]["items"]:
                value = secret_value(build, volume["secret"]["secretName"], item["key"], TEST_TOKEN)
                (target / item["path"]).write_text(value + "\n", encoding="utf-8")
        else:
            assert "emptyDir" in volume, f"{build.name}: unexpected volume {volume}"
        where[mount["mountPath"]] = target
    return where


def relocated(value: str, where: dict[str, Path]) -> str:
    for mount_path, target in sorted(where.items(), key=lambda item: -len(item[0])):
        if PurePosixPath(value).is_relative_to(mount_path):
            return str(target / PurePosixPath(value).relative_to(mount_path))
    return value


def proxy_environment(build: Build) -> dict[str, str]:
    environ: dict[str, str] = {}
    for entry in build.proxy.get("env", []):
        if "value" in entry:
            environ[entry["name"]] = entry["value"]
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        environ[entry["name"]] = secret_value(build, ref["name"], ref["key"], PRODUCTION_REDIS_URL)
    return environ


def load_proxy_settings(build: Build, root: Path) -> Settings:
    where = lay_out_volumes(build, root)
    args = [re.sub(r"^(--[a-z-]+=)(/.*)$", lambda m: m.group(1) + relocated(m.group(2), where), arg)
            for arg in build.proxy["args"]]
    return load_settings(args, proxy_environment(build))


def test_every_flag_and_variable_is_stage_proxys(build: Build) -> None:
    flags = {option.flag for option in OPTIONS if option.flag and not option.internal}
    variables = {option.env for option in OPTIONS if option.env and not option.internal}
    assert build.proxy["command"] == ["stage-proxy"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "stage-proxy" in scripts
    used = [arg.split("=", 1)[0] for arg in build.proxy["args"] if arg.startswith("--")]
    assert used and set(used) <= flags, set(used) - flags
    assert len(used) == len(set(used)), "a flag given twice"
    assert {entry["name"] for entry in build.proxy["env"]} <= variables


def test_the_proxy_loads_its_arguments(build: Build, tmp_path: Path) -> None:
    """load_settings — the parser, every value check, the catalog and the token file — accepts the container's
    arguments and environment with its volumes laid out as Kubernetes would."""
    settings = load_proxy_settings(build, tmp_path)
    ports = {port["name"]: port["containerPort"] for port in build.proxy["ports"]}
    assert (settings.listen.host, settings.listen.port) == ("0.0.0.0", ports["http"])
    # the admin listener on the pod's address: kubelet probes, Prometheus, Alertmanager
    assert (settings.admin_listen.host, settings.admin_listen.port) == ("0.0.0.0", ports["admin"])
    assert settings.ops_token is not None and settings.ops_token.reveal() == TEST_TOKEN
    assert settings.redis_url and settings.redis_url == proxy_environment(build)["STAGE_REDIS_URL"]
    assert settings.workers == 1  # the sizing assumes one process per pod
    assert settings.catalog == parse_catalog((KUBE / "base" / "catalog.toml").read_text(encoding="utf-8"))
    args = build.proxy["args"]
    for flag, kind in (("--config", "configMap"), ("--ops-token-file", "secret"), ("--state-file", "emptyDir")):
        mount, volume = mount_of(build, build.proxy, flag_value(args, flag))
        assert kind in volume, f"{flag} is on {volume}"
        assert mount.get("readOnly", False) is (kind != "emptyDir")


def test_the_legacy_service_listens_on_loopback_only(build: Build, tmp_path: Path) -> None:
    settings = load_proxy_settings(build, tmp_path)
    upstream = urlsplit(str(settings.upstream_url))
    env = {entry["name"]: entry.get("value") for entry in build.legacy.get("env", [])}
    assert env["HOST"] == "127.0.0.1" and upstream.hostname == "127.0.0.1"
    assert env["PORT"] == str(upstream.port)
    assert "ports" not in build.legacy
    assert "hostNetwork" not in build.pod and "hostPort" not in str(build.pod)


# -- Services, probes, NetworkPolicy, PDB -------------------------------------------------------------------


def container_port(container: dict[str, Any], port: int | str) -> int | None:
    for declared in container.get("ports", []):
        if port in (declared["name"], declared["containerPort"]):
            number: int = declared["containerPort"]
            return number
    return None


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def test_the_service_reaches_the_proxy_only(build: Build) -> None:
    pod_labels = build.deployment["spec"]["template"]["metadata"]["labels"]
    services = {svc["metadata"]["name"]: svc for svc in build.all("Service")
                if selects(svc["spec"]["selector"], pod_labels)}
    assert set(services) == {"stagegate", "stagegate-admin"}
    main = services["stagegate"]["spec"]["ports"]
    assert [p["targetPort"] for p in main] == ["http"]
    assert container_port(build.proxy, "http") == 8080
    admin = services["stagegate-admin"]["spec"]["ports"]
    assert [(p["name"], p["targetPort"]) for p in admin] == [("admin", "admin")]
    for service in services.values():
        for port in service["spec"]["ports"]:
            assert container_port(build.proxy, port["targetPort"]) is not None
            assert container_port(build.legacy, port["targetPort"]) is None
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_probes(build: Build) -> None:
    for probe, path in (("readinessProbe", "/_ops/readyz"), ("livenessProbe", "/_ops/healthz")):
        http = build.proxy[probe]["httpGet"]
        assert http["path"] == path
        assert container_port(build.proxy, http["port"]) == 9901


def pod_specs(build: Build) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in build.docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def test_every_container_is_locked_down(build: Build) -> None:
    seen = []
    for workload, pod in pod_specs(build):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert not any(pod.get(key) for key in ("hostNetwork", "hostPID", "hostIPC"))
        for container in [*pod["containers"], *pod.get("initContainers", [])]:
            where = f"{build.name}: {workload}/{container['name']}"
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert not context.get("privileged"), where
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
            assert "memory" in container["resources"]["limits"], where
            seen.append(container["name"])
    assert {"stage-proxy", "legacy"} <= set(seen)
    for namespace in build.all("Namespace"):
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_state_file_and_tmp_are_writable_volumes(build: Build) -> None:
    state_dir = str(PurePosixPath(flag_value(build.proxy["args"], "--state-file")).parent)
    mounts = {mount["mountPath"]: build.volume(mount["name"]) for mount in build.proxy["volumeMounts"]}
    assert "emptyDir" in mounts[state_dir] and "emptyDir" in mounts["/tmp"]


def port_number(build: Build, port: int | str) -> int:
    number = container_port(build.proxy, port)
    assert number is not None, f"NetworkPolicy port {port} is not stage-proxy's"
    return number


def test_the_admin_port_is_for_the_monitoring_namespace_only(build: Build) -> None:
    policy = build.one("NetworkPolicy", "stagegate")["spec"]
    assert selects(policy["podSelector"]["matchLabels"], build.deployment["spec"]["template"]["metadata"]["labels"])
    assert "Ingress" in policy["policyTypes"]
    allowed: dict[int, list[Any]] = {}
    for rule in policy["ingress"]:
        assert rule.get("ports"), "a rule without ports would open every port, the legacy one included"
        for port in rule["ports"]:
            allowed.setdefault(port_number(build, port["port"]), []).append(rule.get("from"))
    assert set(allowed) == {8080, 9901}  # never 8000, the legacy service's
    assert allowed[9901] == [[{"namespaceSelector": {"matchLabels": MONITORING_NAMESPACE}}]]
    assert allowed[8080] == [None]  # the Service's clients, wherever they are


def test_a_disruption_budget_covers_the_pods(build: Build) -> None:
    budget = build.one("PodDisruptionBudget", "stagegate")["spec"]
    assert selects(budget["selector"]["matchLabels"], build.deployment["spec"]["template"]["metadata"]["labels"])
    assert budget["maxUnavailable"] == 1
    assert build.deployment["spec"]["replicas"] >= 2
    assert build.deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_secrets_never_appear_as_literals(build: Build) -> None:
    volume = mount_of(build, build.proxy, flag_value(build.proxy["args"], "--ops-token-file"))[1]
    assert volume["secret"]["secretName"] == "stagegate-ops-token"
    assert not [s for s in build.all("Secret") if s["metadata"]["name"].startswith("stagegate-ops-token")]
    for _, pod in pod_specs(build):
        for container in pod["containers"]:
            for entry in container.get("env", []):
                if entry["name"] in ("STAGE_OPS_TOKEN", "STAGE_REDIS_URL"):
                    assert "secretKeyRef" in entry.get("valueFrom", {}), entry


def test_the_shutdown_timings_add_up(build: Build, tmp_path: Path) -> None:
    drain_s = load_proxy_settings(build, tmp_path).shutdown_timeout_s
    proxy_sleep = build.proxy["lifecycle"]["preStop"]["sleep"]["seconds"]
    legacy_sleep = build.legacy["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = build.pod["terminationGracePeriodSeconds"]
    assert proxy_sleep >= 3  # endpoint removal reaches the nodes before the proxy stops accepting
    assert legacy_sleep >= proxy_sleep + drain_s  # the upstream outlives the drain
    assert grace >= legacy_sleep + 5  # then time to close the pool, flush the state file, stop the legacy service


def test_the_catalog_rolls_out_by_default_and_reloads_in_place_with_the_component(build: Build) -> None:
    name = build.volume("catalog")["configMap"]["name"]
    if build.name == "live-reload":
        assert name == "stagegate-catalog"
    else:
        assert re.fullmatch(r"stagegate-catalog-[a-z0-9]{10}", name), name


def test_the_overlays_set_the_images(build: Build) -> None:
    assert build.proxy["image"] == "registry.example.com/stagegate:0.1.0"
    assert build.legacy["image"].startswith("registry.example.com/legacy-deals:")
    base = yaml.safe_load((KUBE / "base" / "deployment.yaml").read_text())["spec"]["template"]["spec"]["containers"]
    assert base[0]["image"] == "localhost/stagegate:latest"


def test_staging_runs_its_own_redis(builds: dict[str, Build]) -> None:
    staging = builds["staging"]
    url = urlsplit(proxy_environment(staging)["STAGE_REDIS_URL"])
    service = staging.one("Service", url.hostname or "")
    assert [port["port"] for port in service["spec"]["ports"]] == [url.port]
    policy = staging.one("NetworkPolicy", "redis")["spec"]
    assert policy["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "stagegate"}}}]
    assert not builds["production"].all("StatefulSet") and "redis" not in {
        d["metadata"]["name"] for d in builds["production"].all("Deployment")}


def test_every_namespaced_object_is_in_the_overlays_namespace(build: Build) -> None:
    [namespace] = [doc["metadata"]["name"] for doc in build.all("Namespace")]
    for doc in build.docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]


# -- schema validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_kinds_validate_strictly(build: Build, version: str, tmp_path: Path) -> None:
    core = [doc for doc in build.docs if not doc["apiVersion"].startswith(CRD_GROUPS)]
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy", "ServiceAccount",
            "Namespace"} <= {doc["kind"] for doc in core}
    manifest = tmp_path / f"{build.name}.yaml"
    manifest.write_text(yaml.safe_dump_all(core))
    done = subprocess.run([tool("kubernetes-validate"), "--strict", "--kubernetes-version", version, str(manifest)],
                          capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "ERROR" not in output and "WARN" not in output, output
    assert output.count("passed") == len(core), output


# -- Prometheus Operator objects ------------------------------------------------------------------------------


def test_the_prometheusrule_is_the_rules_file(build: Build) -> None:
    rule = build.one("PrometheusRule", "stagegate-validation")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == {"groups": yaml.safe_load(RULES.read_text())["groups"]}
    assert rule["metadata"]["namespace"] == build.deployment["metadata"]["namespace"]


def test_the_servicemonitor_scrapes_the_admin_port(build: Build) -> None:
    monitor = build.one("ServiceMonitor", "stagegate")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [svc for svc in build.all("Service") if selects(selector, svc["metadata"]["labels"])]
    assert [svc["metadata"]["name"] for svc in selected] == ["stagegate-admin"]  # the API Service is not scraped
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("admin", "/metrics")]
    assert "admin" in {port["name"] for port in selected[0]["spec"]["ports"]}
    assert monitor["metadata"]["namespace"] == selected[0]["metadata"]["namespace"]


def test_the_generated_prometheusrule_is_current() -> None:
    done = subprocess.run([sys.executable, str(GENERATOR), "--stdout"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == PROMRULE.read_text(encoding="utf-8"), "stale: run scripts/gen-prometheusrule"
    check = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


# -- the README's commands -------------------------------------------------------------------------------------


def readme_stagectl_lines() -> list[list[str]]:
    """Each ``stagectl …`` command in the README's fenced blocks, up to the next shell operator."""
    text = (KUBE / "README.md").read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            words = list(lexer)
            for start in [i for i, word in enumerate(words) if word == "stagectl"]:
                argv = []
                for word in words[start + 1:]:
                    if set(word) <= set("|&;()<>"):
                        break
                    argv.append(word)
                lines.append(argv)
    return lines


def test_the_readme_stagectl_lines_parse() -> None:
    lines = readme_stagectl_lines()
    assert len(lines) >= 2
    for argv in lines:
        try:
            stagectl_parser().parse_args(argv)
        except CommandError as exc:
            pytest.fail(f"stagectl {shlex.join(argv)}: {exc}")
