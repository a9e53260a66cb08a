"""The `monitoring` compose profile: the dashboard queries only what replicas export, and
Prometheus finds the nodes through the file the head's Ray writes. Neither Ray nor docker runs."""

import json
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from ray._private import ray_constants

from modelserve.metrics import prometheus_names

DOCKER = Path(__file__).resolve().parents[2] / "docker"
MONITORING = DOCKER / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "modelserve.json"
RAY_DEFAULT_TEMP_DIR = "/tmp/ray"
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those nested in (collapsed) rows included."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def panel_exprs(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in all_panels(board["panels"]) for t in p.get("targets", []) if "expr" in t]


def template_queries(board: dict[str, Any]) -> list[str]:
    queries = []
    for variable in board["templating"]["list"]:
        query = variable.get("query", "")
        queries.append(query["query"] if isinstance(query, dict) else query)
        queries.append(variable.get("definition", ""))
    return [q for q in queries if q]


def exported_series() -> dict[str, set[str]]:
    """`{metric: the series Prometheus may hold for it}`: a histogram's `_bucket/_sum/_count`."""
    series = {}
    for metric, name in prometheus_names().items():
        if name.endswith("_bucket"):
            base = name.removesuffix("_bucket")
            series[metric] = {base + suffix for suffix in HISTOGRAM_SERIES}
        else:
            series[metric] = {name}
    return series


def used_names(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in re.findall(r"ray_modelserve_\w+", expr)}


def split_volume(volume: str) -> tuple[str, str, str]:
    source, target, *mode = volume.split(":")
    return source, target, mode[0] if mode else "rw"


def test_the_dashboard_queries_only_exported_series_and_every_one_of_them() -> None:
    board = dashboard()
    exprs = panel_exprs(board)
    allowed = set().union(*exported_series().values())
    assert exprs, "the dashboard has no PromQL targets"
    unknown = used_names(exprs + template_queries(board)) - allowed
    assert not unknown, f"not exported by modelserve.metrics: {sorted(unknown)}"
    used = used_names(exprs)
    unused = [metric for metric, series in exported_series().items() if not series & used]
    assert not unused, f"exported but on no panel: {unused}"


def test_the_batch_panel_shows_a_mean_from_sum_and_count() -> None:
    batch = prometheus_names()["modelserve_batch_size"].removesuffix("_bucket")
    assert any(f"{batch}_sum" in e and f"{batch}_count" in e and "/" in e for e in panel_exprs(dashboard()))


def test_one_row_repeats_over_the_section_variable_and_its_panels_use_it() -> None:
    board = dashboard()
    (variable,) = board["templating"]["list"]
    assert variable["name"] == "section" and variable["multi"] and variable["includeAll"]
    assert template_queries(board)[0] == "label_values(ray_modelserve_requests_total, section)"
    rows = [p for p in all_panels(board["panels"]) if p["type"] == "row"]
    assert [row.get("repeat") for row in rows] == ["section"]
    assert board["panels"][0] is rows[0], "panels above the repeated row would not repeat"
    for expr in panel_exprs(board):
        assert 'section="$section"' in expr, expr


def test_the_dashboard_is_provisioned_with_the_provisioned_datasource() -> None:
    board = dashboard()
    assert board["uid"] == "modelserve" and 36 <= board["schemaVersion"] <= 41
    panel_ids = [p["id"] for p in all_panels(board["panels"])]
    assert len(panel_ids) == len(set(panel_ids))
    provisioning = MONITORING / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    refs = [p["datasource"] for p in all_panels(board["panels"]) if "datasource" in p]
    refs += [t["datasource"] for p in all_panels(board["panels"]) for t in p.get("targets", [])]
    refs += [v["datasource"] for v in board["templating"]["list"]]
    assert refs and all(ref == {"type": "prometheus", "uid": source["uid"]} for ref in refs)
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "modelserve.yml").read_text())["providers"]
    grafana_mounts = {split_volume(v)[1]: split_volume(v)[0] for v in compose()["services"]["grafana"]["volumes"]}
    assert (DOCKER / grafana_mounts[provider["options"]["path"]]).resolve() == DASHBOARD.parent


@pytest.mark.parametrize("name", ["prometheus", "grafana"])
def test_monitoring_services_are_opt_in_private_and_mount_files_that_exist(name: str) -> None:
    spec = compose()
    service = spec["services"][name]
    assert service["profiles"] == ["monitoring"] and service["networks"] == ["ray"]
    assert service["ports"], name
    for port in service["ports"]:
        assert port.startswith("${MONITORING_PUBLISH:-127.0.0.1}:"), port
    assert ":?" not in json.dumps(service), "a required variable would stop `up` without the profile"
    for volume in service["volumes"]:
        source, _, _ = split_volume(volume)
        if source.startswith((".", "/")):
            assert (DOCKER / source).exists(), volume
        else:
            assert source in spec["volumes"], volume
    assert all("profiles" not in spec["services"][node] for node in ("head", "worker"))


def test_grafana_never_falls_back_to_admin_admin() -> None:
    grafana = compose()["services"]["grafana"]
    env = grafana["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env and env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    start = (MONITORING / "grafana" / "start.sh").read_text()
    assert "/dev/urandom" in start and "exec /run.sh" in start
    mounts = [split_volume(v) for v in grafana["volumes"]]
    assert all(mode == "ro" for _, _, mode in mounts), mounts
    (start_target,) = [target for source, target, _ in mounts if source == "./monitoring/grafana/start.sh"]
    assert grafana["entrypoint"] == ["/bin/sh", start_target]


def test_prometheus_reads_the_discovery_file_through_the_heads_temp_dir() -> None:
    services = compose()["services"]
    head_env = services["head"]["environment"]
    temp_dir = head_env.get("RAY_TEMP_DIR") or RAY_DEFAULT_TEMP_DIR
    head_mounts = {target: source for source, target, _ in map(split_volume, services["head"]["volumes"])}
    shared = head_mounts[temp_dir]
    (prom_mount,) = [split_volume(v) for v in services["prometheus"]["volumes"] if split_volume(v)[0] == shared]
    # Ray's symlinks (session_latest, the root discovery file) are absolute: the same path in both.
    assert prom_mount == (shared, temp_dir, "ro")

    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert 5 <= int(config["global"]["scrape_interval"].removesuffix("s")) <= 10
    (job,) = config["scrape_configs"]
    (sd,) = job["file_sd_configs"]
    (path,) = sd["files"]
    expected = PurePosixPath(temp_dir, ray_constants.SESSION_LATEST, ray_constants.PROMETHEUS_SERVICE_DISCOVERY_FILE)
    assert PurePosixPath(path) == expected
    prom_sources = {split_volume(v)[1]: split_volume(v)[0] for v in services["prometheus"]["volumes"]}
    assert (DOCKER / prom_sources["/etc/prometheus/prometheus.yml"]).resolve() == MONITORING / "prometheus.yml"
