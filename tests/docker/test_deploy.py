"""Deployment files, checked as far as this machine allows (no Docker engine here):
Dockerfiles and compose statically, Prometheus config and rules with promtool, and
a real Prometheus scraping a live service, through which every dashboard and alert
expression must evaluate."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.service.conftest import free_port, start_server
from tests.service.test_api import NPY, crops, npy

DOCKER = Path(__file__).resolve().parents[2] / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "topgan.json"
ALERTS = DOCKER / "prometheus" / "alerts.yml"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: install Debian's prometheus package (make test does)")
    return path


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p["targets"]]


def alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    return [r["expr"] for r in rules]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles(name):
    text = (DOCKER / name).read_text()
    base = re.search(r"^FROM (\S+)", text, re.M)
    assert base is not None
    image, _, tag = base.group(1).partition(":")
    pinned = bool(tag) and tag != "latest" and re.search(r"\d", tag) is not None
    assert pinned, f"{name}: base image {base.group(1)} is not pinned"
    if name == "Dockerfile.cuda":
        assert image == "nvidia/cuda"
        assert tag.startswith("13."), "the CUDA image must be CUDA 13"
        assert '".[gpu,postgres]"' in text
    assert re.search(r"^USER topgan$", text, re.M), "runs as a non-root user"
    assert "HEALTHCHECK" in text
    assert "/health" in text
    assert 'VOLUME ["/models", "/data"]' in text
    # Dependencies before code: the pip install of the dependencies precedes the code copy.
    deps = text.index("COPY pyproject.toml")
    install = text.index("pip install", deps)
    code = text.index("COPY service")
    assert deps < install < code


def test_compose_file():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"topgan", "prometheus", "grafana"}
    for name, service in services.items():
        image = service["image"]
        pinned = ":" in image and not image.endswith(":latest")
        assert pinned, f"{name}: image {image} is not pinned"
    topgan = services["topgan"]
    assert "../models:/models:ro" in topgan["volumes"]
    assert any(v.startswith("topgan-data:/data") for v in topgan["volumes"])
    assert "/dev/bus/usb:/dev/bus/usb" in topgan["volumes"], "USB3 cameras reach the container"
    assert "/health" in " ".join(topgan["healthcheck"]["test"])
    assert set(compose["volumes"]) == {"topgan-data", "prometheus-data", "grafana-data"}
    prometheus = services["prometheus"]
    mounted = {v.split(":")[0] for v in prometheus["volumes"]}
    for mount in mounted - {"prometheus-data"}:
        assert (DOCKER / mount).is_file(), mount
    for mount in services["grafana"]["volumes"]:
        source = mount.split(":")[0]
        assert source == "grafana-data" or (DOCKER / source).is_dir(), mount
    gpu = yaml.safe_load((DOCKER / "compose.gpu.yaml").read_text())["services"]["topgan"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_grafana_provisioning_and_dashboard():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "topgan-overview"
    titles = {p["title"] for p in dashboard["panels"]}
    for needed in (
        "Frame rate",
        "Dropped frames",
        "Cells per second by class",
        "Class fractions",
        "Grab-to-result latency per cell",
        "Time per stage (p99)",
        "HTTP errors",
        "Model",
    ):
        assert needed in titles
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    datasource = yaml.safe_load(
        (DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uid = datasource["datasources"][0]["uid"]
    assert all(p["datasource"]["uid"] == uid for p in dashboard["panels"])
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/topgan.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_promtool_checks_config_and_rules(tmp_path):
    promtool = tool("promtool")
    # The config names the rules file where the container mounts it; check a copy that
    # points at the repository's file instead.
    config = (
        (DOCKER / "prometheus" / "prometheus.yml")
        .read_text()
        .replace("/etc/prometheus/alerts.yml", str(ALERTS))
    )
    (tmp_path / "prometheus.yml").write_text(config)
    for args in (
        ["check", "config", str(tmp_path / "prometheus.yml")],
        ["check", "rules", str(ALERTS)],
    ):
        result = subprocess.run(
            [promtool, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_fires_the_quality_alerts_on_a_drifting_instrument_only():
    """docker/prometheus/alerts.test.yml: series of a drifting and of a healthy
    instrument; the hologram-quality alerts fire on the first only (promtool fails
    on a missing alert and on an unexpected one alike)."""
    result = subprocess.run(
        [tool("promtool"), "test", "rules", "alerts.test.yml"],
        cwd=ALERTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.fixture(scope="module")
def service(tmp_path_factory, models_root):
    srv = start_server(tmp_path_factory.mktemp("svc"), models_root)
    yield srv
    srv.stop()


def test_every_dashboard_metric_is_exported(service):
    # Labelled series appear once something was counted: classify a few crops first.
    assert (
        httpx.post(f"{service.url}/classify", content=npy(crops(2)), headers=NPY).status_code == 200
    )
    text = httpx.get(f"{service.url}/metrics").text
    exported = set(re.findall(r"^(topgan_[a-z_]+)", text, re.M))
    for expr in dashboard_exprs() + alert_exprs():
        for metric in re.findall(r"topgan_[a-z_]+", expr):
            assert metric in exported, f"{metric} (in {expr!r}) is not in /metrics"


def test_prometheus_scrapes_the_service(tmp_path, service):
    prometheus = tool("prometheus")
    with httpx.Client(base_url=service.url) as c:
        for _ in range(3):
            assert c.post("/classify", content=npy(crops(4)), headers=NPY).status_code == 200
        classified = sum(
            float(line.split()[-1])
            for line in c.get("/metrics").text.splitlines()
            if line.startswith("topgan_cells_total{")
        )
    assert classified >= 12
    port = free_port()
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(tmp_path / "alerts.yml")],
                "scrape_configs": [
                    {
                        "job_name": "topgan",
                        "static_configs": [{"targets": [service.url.removeprefix("http://")]}],
                    }
                ],
            }
        )
    )
    command = [
        prometheus,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        value = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                data = httpx.get(f"{api}/query", params={"query": "sum(topgan_cells_total)"}).json()
                if data["status"] == "success" and data["data"]["result"]:
                    value = float(data["data"]["result"][0]["value"][1])
                    if value >= classified:
                        break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert value == classified, "Prometheus reads back the cells the service counted"
        for expr in dashboard_exprs() + alert_exprs():
            answer = httpx.get(f"{api}/query", params={"query": expr}).json()
            assert answer["status"] == "success", f"{expr}: {answer}"
        rules = httpx.get(f"{api}/rules").json()["data"]["groups"][0]["rules"]
        expected = {
            "TopganDown",
            "TopganFramesDropped",
            "TopganLatencyHigh",
            "TopganNoCells",
            "TopganCameraDown",
            "TopganModelNotReady",
        }
        assert {r["name"] for r in rules} >= expected
        assert all(r["health"] == "ok" for r in rules)
    finally:
        process.terminate()
        process.wait(30)


@pytest.mark.parametrize(
    ("alert", "setting"),
    [
        ("TopganBackgroundDrift", "quality_background_max_nm"),
        ("TopganFringeContrastLow", "quality_fringe_contrast_min"),
        ("TopganCarrierDrift", "quality_carrier_drift_max"),
        ("TopganLatencyHigh", "latency_p99_max_s"),
    ],
)
def test_the_live_pages_thresholds_are_the_alerts(alert, setting):
    """The page draws each threshold from the settings; the alert rule must fire at the
    same value, or the operator sees green while Prometheus pages someone."""
    from service.settings import Settings

    rules = yaml.safe_load(ALERTS.read_text())
    expr = next(r["expr"] for g in rules["groups"] for r in g["rules"] if r.get("alert") == alert)
    found = re.search(r"[<>]\s*([0-9.]+)(?:\s+and\b|\s*$)", expr)
    assert found is not None, expr
    assert float(found.group(1)) == Settings.model_fields[setting].default, expr
