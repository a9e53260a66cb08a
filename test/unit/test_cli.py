from pathlib import Path

import pytest
from helpers import make_project, write_conf

from modelserve.cli import main, parser


@pytest.mark.parametrize(
    "argv",
    [["check", "-c", "x.ini"], ["-c", "x.ini", "check"], ["--config", "x.ini", "check"]],
)
def test_config_flag_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    assert (args.command, args.config) == ("check", "x.ini")


def test_apply_is_the_default() -> None:
    args = parser().parse_args([])
    assert (args.command, args.config) == (None, "conf.ini")


def test_check_touches_no_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(make_project(tmp_path), {}, "[algopkg.Echo]\nbackend = Echo\nroute = echo\n")
    assert main(["check", "-c", str(conf)]) == 0
    assert "OK (1 section(s): /echo)" in capsys.readouterr().out


def test_invalid_file_exits_2_and_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(make_project(tmp_path), {}, "[algopkg.Echo]\nbackend = Echo\nroute = echo\nreplicas = -1\n")
    for command in (["check"], ["apply"], []):
        assert main([*command, "-c", str(conf)]) == 2
        assert "[algopkg.Echo] replicas = '-1'" in capsys.readouterr().err
