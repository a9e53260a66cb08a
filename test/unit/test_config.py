from pathlib import Path

import pytest
from helpers import OTHER_SECTIONS_KEYS, make_project, mirror_project, write_conf

from modelserve.config import ConfigError, load_config
from modelserve.keys import Replicas

EXAMPLE = """
[algopkg.AlgoExample]
backend = algo_backend
model = algoexample_model_v1.npz
route = extract
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


def problems(project: Path, *sections: str, **serve: object) -> list[str]:
    path = write_conf(project, {"port": 8000, **serve}, *sections)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_the_shipped_conf_ini_is_valid_whatever_sections_a_user_adds() -> None:
    """The user's own conf.ini (the example plus whatever they added) must load."""
    config = load_config(Path(__file__).resolve().parents[2] / "conf.ini")
    zoos = [config.zoo_of(spec) for spec in config.sections]
    assert zoos and all(zoo.startswith("s3://") or Path(zoo).is_absolute() for zoo in zoos)


def test_the_example_section(tmp_path: Path) -> None:
    """The example as shipped, in a copy of its own (a user's edits to conf.ini never break this).

    The copy sees the repository's files, so a key file `[MODEL SERVE] api_keys` names is there."""
    import configparser

    project = mirror_project(tmp_path / "project")
    shipped = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    shipped.read(Path(__file__).resolve().parents[2] / "conf.ini")
    for extra in [s for s in shipped.sections() if s not in ("MODEL SERVE", "algopkg.AlgoExample")]:
        shipped.remove_section(extra)
    for key in OTHER_SECTIONS_KEYS:  # a canary's weight or a mirror names sections left out here
        shipped.remove_option("algopkg.AlgoExample", key)
    with (project / "conf.ini").open("w") as out:
        shipped.write(out)
    config = load_config(project / "conf.ini")
    spec = next(s for s in config.sections if s.section == "algopkg.AlgoExample")
    assert (spec.package, spec.backend, spec.route, spec.methods) == (
        "AlgoExample",
        "algo_backend",
        "extract",
        ("GET", "POST"),
    )
    assert config.serve.host == "127.0.0.1" and Path(config.zoo_of(spec)).name == "Model_ZOO"


def test_a_user_s_extra_section_keeps_the_suite_green(tmp_path: Path) -> None:
    """The user's conf.ini and one more section, in a copy that sees the user's files (their key files)."""
    project = mirror_project(tmp_path / "project")
    shipped = (Path(__file__).resolve().parents[2] / "conf.ini").read_text()
    extra = EXAMPLE.replace("[algopkg.AlgoExample]", "[algopkg.AlgoExample:zz_user_test]").replace(
        "route = extract", "route = zz_user_test"
    )
    (project / "conf.ini").write_text(shipped + extra)
    assert [s.app_name for s in load_config(project / "conf.ini").sections][-1] == "AlgoExample:zz_user_test"


def test_defaults_and_original_keys(project: Path) -> None:
    config = load_config(write_conf(project, {"port": 666}, EXAMPLE))
    spec = config.sections[0]
    assert config.serve.port == 666 and config.serve.address == "auto" and config.serve.access_log == "off"
    assert load_config(write_conf(project, {"access_log": "On"}, EXAMPLE)).serve.access_log == "on"
    assert load_config(write_conf(project, {"access_log": "JSON"}, EXAMPLE)).serve.access_log == "json"
    assert (str(spec.replicas), spec.gpu_cost, spec.cpu_cost, spec.methods) == ("1", 0.0, 1.0, ("GET",))
    assert spec.model_files == ("algoexample_model_v1.npz",) and spec.app_name == "AlgoExample"


def test_variants_of_one_package(project: Path) -> None:
    small = EXAMPLE.replace("[algopkg.AlgoExample]", "[algopkg.AlgoExample:small]").replace("extract", "small")
    config = load_config(write_conf(project, {}, EXAMPLE, small + "gpu_cost = 0.5\nreplicas = 2\n"))
    assert [s.app_name for s in config.sections] == ["AlgoExample", "AlgoExample:small"]
    assert config.sections[1].gpu_cost == 0.5 and config.sections[1].replicas == Replicas(2, 2)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("replicas = many", "[algopkg.AlgoExample] replicas = 'many': must be a whole number"),
        ("replicas = 0", "replicas = '0'"),
        ("gpu_cost = 1.5", "gpu_cost = '1.5': above 1 must be a whole number"),
        ("gpu_cost = -1", "gpu_cost = '-1'"),
        ("method = DELETE", "method = 'DELETE': must be GET, POST or GET,POST"),
        ("user_config = [1]", "user_config = '[1]': must be a JSON object"),
        ("colour = blue", "[algopkg.AlgoExample] colour: unknown key"),
        ("model = missing.pb", "model = 'missing.pb': /"),  # then the path: `...Model_ZOO/missing.pb: no such file`
        ("model = digits@x", "'digits@x': the version must be a number"),
        ("backend = nope", "backend = 'nope': no class of that name"),
        ("warmup = none.json", "warmup = 'none.json': file not found"),
        ("env = venv", "env = 'venv': must be empty"),
        ("model_calls = fast", "model_calls = 'fast': must be `thread` (timeout_s holds) or `inline`"),
        ("env = conda:", "env = 'conda:'"),
        ("env = pip", "env = 'pip': "),
        ("warmup = backend.py", "warmup = 'backend.py': cannot read backend.py as JSON"),
    ],
)
def test_section_errors_name_section_key_value(project: Path, line: str, expected: str) -> None:
    key = line.split("=")[0].strip()
    kept = [row for row in EXAMPLE.splitlines() if row.split("=")[0].strip() != key]
    found = problems(project, "\n".join([*kept, line]) + "\n")
    assert any(expected in p for p in found), found


def test_route_errors(project: Path) -> None:
    found = problems(project, EXAMPLE.replace("route = extract", "route = a b"))
    assert any("route = 'a b'" in p for p in found)
    found = problems(project, EXAMPLE.replace("route = extract", "route = -/healthz"))
    assert any("reserves" in p for p in found)
    found = problems(project, EXAMPLE.replace("route = extract\n", ""))
    assert (
        "[algopkg.AlgoExample] route: missing; write e.g. `route = extract` (HTTP path the section is served at)"
        in found
    )


def test_duplicate_routes_and_ping_collisions(project: Path) -> None:
    twin = EXAMPLE.replace("[algopkg.AlgoExample]", "[algopkg.Echo]").replace("algo_backend", "Echo")
    twin = twin.replace("algoexample_model_v1.npz", "echo_model.txt")
    found = problems(project, EXAMPLE, twin)
    (clash,) = found
    assert clash.startswith("[algopkg.Echo] route = 'extract': /extract is already the route of [algopkg.AlgoExample]")
    assert "give each section its own route, or give every section of the route a `traffic` percent" in clash
    found = problems(project, EXAMPLE, twin.replace("route = extract", "route = extract/ping"))
    assert any("health check of [algopkg.AlgoExample]" in p for p in found)


def test_unknown_section_and_missing_package(project: Path) -> None:
    found = problems(project, EXAMPLE, "[model.Other]\nroute = x\n", "[algopkg.Nope]\nbackend = X\nroute = nope\n")
    assert any(p.startswith("[model.Other]: unknown section") for p in found)
    assert any("[algopkg.Nope]: package 'Nope' not found" in p for p in found)


def test_serve_section_errors(project: Path) -> None:
    found = problems(
        project, EXAMPLE, port="http", colour="red", ingress="warp", dashboard_port=18265, access_log="loud"
    )
    assert any("[MODEL SERVE] dashboard_port = 18265: Ray keeps 10002-19999" in p for p in found)
    assert any("[MODEL SERVE] port = 'http'" in p for p in found)
    assert any("[MODEL SERVE] colour: unknown key" in p for p in found)
    assert any("[MODEL SERVE] ingress = 'warp'" in p for p in found)
    assert any(
        "[MODEL SERVE] access_log = 'loud': must be off, on (Ray Serve's line per request) or json" in p for p in found
    )


def test_all_problems_reported_at_once(project: Path) -> None:
    found = problems(project, EXAMPLE + "replicas = x\ngpu_cost = y\n", port="z")
    assert len(found) == 3


def test_ini_level_errors(project: Path) -> None:
    path = project / "conf.ini"
    path.write_text("[MODEL SERVE]\nport = 1\nport = 2\n")
    with pytest.raises(ConfigError, match=r"\[MODEL SERVE\] port is set twice \(line 3\)"):
        load_config(path)
    path.write_text("[algopkg.AlgoExample]\nbackend = algo_backend\nroute = x\n")
    with pytest.raises(ConfigError, match=r"\[MODEL SERVE\] is missing"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(project / "absent.ini")


def test_syntax_error_in_backend_is_reported_without_importing(project: Path) -> None:
    (project / "algopkg" / "Echo" / "backend.py").write_text("class Echo(:\n")
    found = problems(project, "[algopkg.Echo]\nbackend = Echo\nroute = echo\n")
    assert any("syntax error at line 1" in p for p in found)


def test_a_misspelled_key_gets_a_suggestion(project: Path) -> None:
    found = problems(project, EXAMPLE + "replcas = 2\n", prot=8000)
    assert "[algopkg.AlgoExample] replcas: unknown key; did you mean `replicas`?" in found
    assert "[MODEL SERVE] prot: unknown key; did you mean `port`?" in found


def test_a_fix_says_what_to_write(project: Path) -> None:
    found = problems(project, EXAMPLE + "replicas = lots\n")
    assert found == [
        "[algopkg.AlgoExample] replicas = 'lots': must be a whole number from 1 to 1024, a range MIN-MAX such "
        "as 1-4 (autoscaling; 0-4 scales to zero), or auto (one per free CPU) (fix: e.g. `replicas = 4`)"
    ]


def test_a_range_is_written_as_it_is_declared(project: Path) -> None:
    """No `1.04858e+06`: whole bounds as whole numbers, fractions as decimals."""
    found = problems(project, EXAMPLE + "max_body_kb = 2000000\ntimeout_s = 0\n")
    assert "[algopkg.AlgoExample] max_body_kb = '2000000': must be a whole number from 1 to 1048576" in found[0]
    assert "[algopkg.AlgoExample] timeout_s = '0': must be a number from 0.001 to 86400" in found[1]
    assert not any("e+" in problem for problem in found), found


@pytest.mark.parametrize("value", ["auto", "local", "http://head:8265", "https://h", "10.0.0.5:6379", "head:6379"])
def test_valid_addresses(project: Path, value: str) -> None:
    assert load_config(write_conf(project, {"address": value}, EXAMPLE)).serve.address == value


@pytest.mark.parametrize("value", ["atuo", "head", "ray://", "head:port"])
def test_invalid_addresses_are_rejected_by_check(project: Path, value: str) -> None:
    (found,) = problems(project, EXAMPLE, address=value)
    assert found.startswith(f"[MODEL SERVE] address = {value!r}: must be auto, local, a dashboard URL")


@pytest.mark.parametrize("value", ["", "127.0.0.1 x", "0.0.0.0\t"])
def test_a_host_with_whitespace_is_rejected(project: Path, value: str) -> None:
    path = write_conf(project, {}, EXAMPLE)
    path.write_text(path.read_text().replace("[MODEL SERVE]\n", f"[MODEL SERVE]\nhost = {value}\n"))
    if value.strip() and " " not in value.strip():
        assert load_config(path).serve.host == value.strip()  # configparser strips the line's ends
        return
    with pytest.raises(ConfigError, match=r"\[MODEL SERVE\] host = .*must be an interface address"):
        load_config(path)


def test_every_kind_of_problem_is_reported_in_one_run(project: Path) -> None:
    """Key errors, a missing class, a missing model file and a route clash, all at once."""
    other = EXAMPLE.replace("[algopkg.AlgoExample]", "[algopkg.AlgoExample:b]").replace("algo_backend", "Nope")
    other = other.replace("algoexample_model_v1.npz", "absent.npz") + "replicas = x\n"
    found = problems(project, EXAMPLE, other)
    assert len(found) == 4, found
    assert any("[algopkg.AlgoExample:b] replicas = 'x'" in p for p in found)
    assert any("[algopkg.AlgoExample:b] backend = 'Nope': no class of that name" in p for p in found)
    assert any("[algopkg.AlgoExample:b] model = 'absent.npz': " in p and "no such file" in p for p in found)
    assert any("[algopkg.AlgoExample:b] route = 'extract': /extract is already the route of" in p for p in found)


def test_a_missing_backend_says_what_to_write(project: Path) -> None:
    found = problems(project, EXAMPLE.replace("backend = algo_backend\n", ""))
    assert found == [
        "[algopkg.AlgoExample] backend: missing; write e.g. `backend = Classifier` "
        "(class name in algopkg/<Package>/backend.py)"
    ]


@pytest.mark.parametrize(
    ("raw", "expected"), [("1", "1"), ("4", "4"), ("1-4", "1-4"), ("0-3", "0-3"), ("2-2", "2"), (" 3 ", "3")]
)
def test_replicas_is_a_count_or_an_autoscaling_range(project: Path, raw: str, expected: str) -> None:
    spec = load_config(write_conf(project, {}, EXAMPLE + f"replicas = {raw}\n")).sections[0]
    assert str(spec.replicas) == expected and spec.replicas.autoscaling == ("-" in expected)


@pytest.mark.parametrize("raw", ["0", "4-1", "-1", "1-", "a-b", "0-0", "1-2000", "1.5"])
def test_a_bad_replicas_value_says_both_forms(project: Path, raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_conf(project, {}, EXAMPLE + f"replicas = {raw}\n"))
    assert any("replicas" in p and "a range MIN-MAX such as 1-4" in p for p in caught.value.problems), caught.value


def accepted(project: Path, *sections: str) -> bool:
    return bool(load_config(write_conf(project, {}, *sections)).sections)


def test_sections_share_a_route_by_traffic_percents_that_add_up_to_100(project: Path) -> None:
    twin = EXAMPLE.replace("[algopkg.AlgoExample]", "[algopkg.AlgoExample:v2]")
    assert accepted(project, EXAMPLE + "traffic = 90\n", twin + "traffic = 10\n")
    assert accepted(project, EXAMPLE + "traffic = 0\n", twin + "traffic = 100\n")
    assert accepted(project, EXAMPLE + "traffic = 100\n")
    assert problems(project, EXAMPLE + "traffic = 50\n") == [  # alone on its route: the percents still add up
        "[algopkg.AlgoExample] traffic = 50: the percents of a route add up to 100, and /extract has no other "
        "section; write `traffic = 100` (or no traffic), or add the section that takes the other 50%"
    ]
    found = problems(project, EXAMPLE + "traffic = 90\n", twin + "traffic = 20\n")
    assert found == [
        "[algopkg.AlgoExample] traffic: the sections of /extract add up to 110, not 100 "
        "([algopkg.AlgoExample] 90, [algopkg.AlgoExample:v2] 20); make them add up to 100"
    ]
    assert accepted(project, EXAMPLE + "traffic = 90\n", twin + "traffic = 10\n" + "sticky = header:x-a\n")
    both = problems(
        project, EXAMPLE + "traffic = 90\nsticky = header:x-b\n", twin + "traffic = 10\nsticky = header:x-a\n"
    )
    assert any("sticky: the sections of /extract name different headers" in p for p in both)
    bad = problems(project, EXAMPLE + "sticky = cookie:id\n")
    assert any("sticky = 'cookie:id': must be header:<name>" in p for p in bad)


def test_a_mirror_names_its_primary(project: Path) -> None:
    shadow = EXAMPLE.replace("[algopkg.AlgoExample]", "[algopkg.AlgoExample:shadow]").replace("extract", "shadow")
    assert accepted(project, EXAMPLE, shadow + "mirror_of = algopkg.AlgoExample\nmirror_percent = 10\n")
    assert accepted(project, EXAMPLE, shadow + "mirror_of = AlgoExample\n")
    for value, message in [
        ("algopkg.Nope", "no such section in this file"),
        ("algopkg.AlgoExample:shadow", "a section cannot mirror itself"),
    ]:
        (found,) = problems(project, EXAMPLE, shadow + f"mirror_of = {value}\n")
        assert found.startswith(f"[algopkg.AlgoExample:shadow] mirror_of = {value!r}: {message}"), found
    chain = shadow.replace(":shadow]", ":chain]").replace("route = shadow", "route = chain")
    found = problems(project, EXAMPLE, shadow + "mirror_of = AlgoExample\n", chain + "mirror_of = AlgoExample:shadow\n")
    assert any("that section is itself a mirror" in p for p in found)
    same = shadow.replace("route = shadow", "route = extract") + "mirror_of = AlgoExample\n"
    assert any(
        "a mirror needs a route of its own" in p
        for p in problems(project, EXAMPLE + "traffic = 100\n", same + "traffic = 0\n")
    )
