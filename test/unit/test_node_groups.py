"""`[NODES <name>]` sections: parsed into `Config.node_groups`, every bad one named by `check`. No Ray."""

from pathlib import Path

import pytest
from helpers import make_project, write_conf

from modelserve import cli
from modelserve.config import ConfigError, load_config
from modelserve.node_groups import NODE_KEYS, NodeGroup

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = """
[algopkg.AlgoExample]
backend = algo_backend
model = algoexample_model_v1.npz
route = extract
"""
HEAD = """
[NODES head]
cpus = 2
memory = 4Gi
"""
GPU_SECTION = (
    EXAMPLE.replace("[algopkg.AlgoExample]", "[algopkg.AlgoExample:gpu]").replace("extract", "gpu")
    + "gpu_cost = 1\ncpu_cost = 2\n"
)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("nodes"))


def problems(project: Path, *sections: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write_conf(project, {"port": 8000}, *sections))
    return info.value.problems


def test_a_head_and_worker_groups_become_config_node_groups(project: Path) -> None:
    gpu = "[NODES gpu]\nimage = registry.example.com/mm:1\ncpus = 8\nmemory = 32Gi\ngpus = 1\n"
    cpu = "[NODES cpu-2]\nmin_replicas = 0\nmax_replicas = 4\n"
    config = load_config(write_conf(project, {"port": 8000}, EXAMPLE, HEAD, GPU_SECTION, gpu, cpu))
    assert config.node_groups == (
        NodeGroup("head", "modelserve-node:2.60", 2.0, "4Gi", 0, 1, 1),
        NodeGroup("gpu", "registry.example.com/mm:1", 8.0, "32Gi", 1, 1, 1),
        NodeGroup("cpu-2", "modelserve-node:2.60", 4.0, "8Gi", 0, 0, 4),
    )
    assert [g.is_head for g in config.node_groups] == [True, False, False]
    assert [s.section for s in config.sections] == ["algopkg.AlgoExample", "algopkg.AlgoExample:gpu"]


def test_without_nodes_sections_nothing_is_required(project: Path) -> None:
    """As before: a GPU section needs no group when the file names none."""
    assert load_config(write_conf(project, {"port": 8000}, EXAMPLE, GPU_SECTION)).node_groups == ()


def test_the_shipped_conf_ini_is_still_valid() -> None:
    config = load_config(ROOT / "conf.ini")
    assert config.sections and all(g.name for g in config.node_groups)


def test_every_key_is_declared_with_a_default_and_what_a_change_does() -> None:
    assert list(NODE_KEYS) == ["image", "cpus", "memory", "gpus", "min_replicas", "max_replicas"]
    assert {key.change for _, key in NODE_KEYS.values()} == {"new cluster (KubeRay)"}
    assert all(key.default is not None and key.example and key.help for _, key in NODE_KEYS.values())


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("cpus = 0", "[NODES gpu] cpus = '0': must be a whole number from 1 to 1024 (it is Ray's --num-cpus)"),
        ("cpus = 1.5", "[NODES gpu] cpus = '1.5': must be a whole number"),
        ("cpus = four", "[NODES gpu] cpus = 'four': must be a whole number"),
        ("memory = 16GB", "[NODES gpu] memory = '16GB': must be a Kubernetes memory quantity such as 16Gi"),
        ("memory = 0Gi", "[NODES gpu] memory = '0Gi': must be a Kubernetes memory quantity"),
        ("memory = ٨Gi", "[NODES gpu] memory = '٨Gi': must be a Kubernetes memory quantity"),
        ("memory = -1Gi", "[NODES gpu] memory = '-1Gi'"),
        ("gpus = -1", "[NODES gpu] gpus = '-1': must be a whole number from 0 to 64 (fix: e.g. `gpus = 1`)"),
        ("gpus = 0.5", "[NODES gpu] gpus = '0.5': must be a whole number"),
        ("image = a b", "[NODES gpu] image = 'a b': must be a container image such as modelserve-node:2.60"),
        ("image =", "[NODES gpu] image = '': must be a container image"),
        ("min_replicas = -1", "[NODES gpu] min_replicas = '-1': must be a whole number from 0 to 1000"),
        ("max_replicas = 0", "[NODES gpu] max_replicas = '0': must be a whole number from 1 to 1000"),
        ("gpu = 1", "[NODES gpu] gpu: unknown key; did you mean `gpus`?"),
    ],
)
def test_a_bad_value_names_the_group_the_key_the_value_and_the_fix(project: Path, line: str, expected: str) -> None:
    found = problems(project, EXAMPLE, HEAD, f"[NODES gpu]\n{line}\n")
    assert len(found) == 1 and found[0].startswith(expected), found


def test_min_replicas_above_max_replicas(project: Path) -> None:
    found = problems(project, EXAMPLE, HEAD, "[NODES cpu]\nmin_replicas = 5\nmax_replicas = 2\n")
    assert found == [
        "[NODES cpu] min_replicas = 5: above max_replicas = 2; set max_replicas = 5 or more, or lower min_replicas"
    ]
    found = problems(project, EXAMPLE, HEAD, "[NODES cpu]\nmin_replicas = 3\n")
    assert found == [
        "[NODES cpu] min_replicas = 3: above max_replicas = 1, its default; set max_replicas = 3 or more, "
        "or lower min_replicas"
    ]
    # a bad max_replicas is its own problem, not also a comparison with the default
    assert len(problems(project, EXAMPLE, HEAD, "[NODES cpu]\nmin_replicas = 3\nmax_replicas = x\n")) == 1


def test_the_head_group_is_one_pod(project: Path) -> None:
    found = problems(project, EXAMPLE, HEAD + "min_replicas = 2\nmax_replicas = 3\n")
    assert found == [
        f"[NODES head] {key} = '{value}': the head group is one pod; remove the key "
        "(worker groups, e.g. [NODES cpu], take min_replicas and max_replicas)"
        for key, value in (("min_replicas", 2), ("max_replicas", 3))
    ]


def test_worker_groups_need_a_head_group(project: Path) -> None:
    found = problems(project, EXAMPLE, "[NODES cpu]\n", "[NODES big]\ncpus = 16\n")
    assert found == [
        "[NODES cpu], [NODES big]: worker groups need a head group (one pod); add [NODES head], e.g. with `cpus = 4`"
    ]
    assert load_config(write_conf(project, {"port": 8000}, EXAMPLE, HEAD)).node_groups[0].is_head  # a head alone


@pytest.mark.parametrize("header", ["[NODES]", "[NODES GPU]", "[NODES gpu.x]", "[NODES  gpu]", "[NODES -gpu]"])
def test_a_group_name_is_a_kubernetes_name(project: Path, header: str) -> None:
    found = problems(project, EXAMPLE, HEAD, f"{header}\ngpus = 1\n")
    assert len(found) == 1 and found[0].startswith(f"{header}: a node group's name is lower-case letters"), found


def test_other_unknown_sections_keep_their_message(project: Path) -> None:
    found = problems(project, EXAMPLE, "[NODE gpu]\ngpus = 1\n")
    assert found == [
        "[NODE gpu]: unknown section; use [MODEL SERVE] or [algopkg.<Package>] (optionally "
        "[algopkg.<Package>:<variant>]) or [NODES <name>] (a KubeRay node group)"
    ]


def test_a_gpu_section_needs_a_group_with_a_gpu(project: Path) -> None:
    found = problems(project, EXAMPLE, HEAD, GPU_SECTION)
    assert found == [
        "[algopkg.AlgoExample:gpu] gpu_cost = 1: no [NODES ...] group has a GPU; add one, e.g. [NODES gpu] gpus = 1"
    ]
    two = GPU_SECTION.replace("gpu_cost = 1", "gpu_cost = 2")
    found = problems(project, EXAMPLE, HEAD, two, "[NODES gpu]\ngpus = 1\ncpus = 8\n")
    assert found == [
        "[algopkg.AlgoExample:gpu] gpu_cost = 2: no [NODES ...] group has 2 GPUs (the most is 1, in [NODES gpu]); "
        "set gpus = 2 there, or add a group, e.g. [NODES gpu2] gpus = 2"
    ]


def test_a_fraction_of_a_gpu_fits_a_one_gpu_group_with_enough_cpus(project: Path) -> None:
    quarter = GPU_SECTION.replace("gpu_cost = 1", "gpu_cost = 0.25")
    groups = (HEAD, "[NODES gpu]\ngpus = 1\ncpus = 2\n")
    assert len(load_config(write_conf(project, {"port": 8000}, EXAMPLE, quarter, *groups)).node_groups) == 2
    found = problems(project, EXAMPLE, quarter.replace("cpu_cost = 2", "cpu_cost = 3"), *groups)
    assert found == [
        "[algopkg.AlgoExample:gpu] cpu_cost = 3: no [NODES ...] group with gpus >= 0.25 has 3 CPUs "
        "(the most is 2, in [NODES gpu]); set cpus = 3 there, or lower cpu_cost"
    ]


def test_a_cpu_section_needs_a_group_with_its_cpus(project: Path) -> None:
    found = problems(project, EXAMPLE + "cpu_cost = 6\n", HEAD, "[NODES cpu]\ncpus = 4\n")
    assert found == [
        "[algopkg.AlgoExample] cpu_cost = 6: no [NODES ...] group has 6 CPUs (the most is 4, in [NODES cpu]); "
        "set cpus = 6 there, or lower cpu_cost"
    ]


def test_all_problems_at_once_and_check_exits_2(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_conf(
        project,
        {"port": 8000},
        EXAMPLE,
        GPU_SECTION,
        "[NODES gpu]\ncpus = many\nmemory = lots\nmin_replicas = 4\nmax_replicas = 2\n",
        "[NODES Bad]\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    found = info.value.problems
    assert [p.split(": ")[0] for p in found] == [
        "[NODES gpu] cpus = 'many'",
        "[NODES gpu] memory = 'lots'",
        "[NODES gpu] min_replicas = 4",
        "[NODES Bad]",
        "[NODES gpu]",  # worker groups need a head group
        "[algopkg.AlgoExample:gpu] gpu_cost = 1",
    ], found
    assert cli.main(["check", "-c", str(path)]) == 2
    assert f"{path}: {len(found)} problem(s)" in capsys.readouterr().err
