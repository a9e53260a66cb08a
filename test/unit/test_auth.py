"""API key files and the key check, without Ray."""

from pathlib import Path

import pytest
from helpers import make_project, write_conf

from modelserve import auth
from modelserve.config import ConfigError, load_config
from modelserve.errors import Unauthorized

KEY = "k3y-0123456789-abcdef"


def test_a_key_file_holds_keys_and_digests_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(f"# production\n{KEY}\n\n  sha256:{'AB' * 32}  \n{KEY}\n")
    assert auth.read_key_file(path) == tuple(sorted({auth.digest(KEY), "ab" * 32}))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no key"),
        ("# only a comment\n", "holds no key"),
        ("short\n", "line 1: a key must be at least 16 characters"),
        ("two words in one key line\n", "without spaces"),
        ("sha256:abc\n", "line 1: `sha256:` must be followed by 64 hex digits"),
    ],
)
def test_an_unusable_key_file_says_why(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(text)
    with pytest.raises(auth.KeyFileError, match=message):
        auth.read_key_file(path)
    with pytest.raises(auth.KeyFileError, match="cannot read"):
        auth.read_key_file(tmp_path / "missing.txt")


def test_the_key_check() -> None:
    digests = (auth.digest(KEY),)
    auth.require_key({"authorization": f"Bearer {KEY}"}, digests)
    auth.require_key({"authorization": f"bearer  {KEY} "}, digests)
    auth.require_key({"x-api-key": KEY}, digests)
    auth.require_key({}, ())  # no keys: open
    for headers, message in [
        ({}, "a valid API key is required"),
        ({"authorization": "Basic dXNlcjpwdw=="}, "a valid API key is required"),
        ({"authorization": f"Bearer {KEY}x"}, "not valid"),
        ({"x-api-key": KEY.upper()}, "not valid"),
    ]:
        with pytest.raises(Unauthorized, match=message) as caught:
            auth.require_key(headers, digests)
        assert caught.value.status_code == 401
        assert caught.value.headers == {"WWW-Authenticate": 'Bearer realm="modelserve"'}
        assert KEY not in str(caught.value)


SECTION = """
[algopkg.Echo]
backend = Echo
model = echo_model.txt
route = echo
api_keys = {section_keys}
"""


def test_check_rejects_unusable_key_files_naming_section_and_key(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    (project / "empty.txt").write_text("# nothing yet\n")
    conf = write_conf(project, {"api_keys": "missing.txt"}, SECTION.format(section_keys="empty.txt"))
    with pytest.raises(ConfigError) as caught:
        load_config(conf)
    problems = caught.value.problems
    assert any(p.startswith("[MODEL SERVE] api_keys = 'missing.txt': cannot read") for p in problems), problems
    assert any(p.startswith("[algopkg.Echo] api_keys = 'empty.txt':") and "holds no key" in p for p in problems)
    assert any("secrets.token_urlsafe" in p for p in problems)  # says how to make a key


def test_a_section_key_file_replaces_the_global_one(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    (project / "all.txt").write_text(f"{KEY}\n")
    (project / "team.txt").write_text(f"{KEY}-team\n")
    config = load_config(write_conf(project, {"api_keys": "all.txt"}, SECTION.format(section_keys="team.txt")))
    assert config.api_keys_file(config.sections[0]) == project / "team.txt"
    open_config = load_config(write_conf(project, {}, SECTION.format(section_keys="")))
    assert open_config.api_keys_file(open_config.sections[0]) is None
