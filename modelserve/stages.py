"""Stages: `controller.py --stage grey` applies a conf.ini beside production on the same cluster.

A stage's sections are applications of their own (`grey.<section app>`), served under
`/grey/<route>` with one replica each, as the original CI/CD template's grey stage was. Ray's
declarative apply replaces every application, so each apply carries the other stages'
applications as they run: a production apply never touches a stage, nor the reverse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from modelserve.keys import Replicas
from modelserve.settings import Config

PRODUCTION = ""
_STAGE_RE = re.compile(r"^[A-Za-z0-9_~-]+$")


class StageError(ValueError):
    """Not a usable stage name; the message says what is."""


def check_name(stage: str) -> str:
    if stage and not _STAGE_RE.match(stage):
        raise StageError(
            f"--stage {stage!r}: a stage name is one path segment of letters, digits, `_`, `~` or `-`, e.g. grey"
        )
    return stage


def staged(config: Config, stage: str) -> Config:
    """The config as that stage serves it: routes under `/<stage>/`, one replica per section."""
    if not stage:
        return config
    sections = tuple(
        replace(s, stage=stage, route=f"{stage}/{s.route}", replicas=Replicas(1, 1)) for s in config.sections
    )
    return replace(config, sections=sections)


def stage_of(app_name: str) -> str:
    """The stage an application belongs to (`grey.Echo` -> grey; production's -> "")."""
    head, dot, _ = app_name.partition(".")
    return head if dot and not app_name.startswith("modelserve-") else PRODUCTION


def others(running: dict[str, dict[str, Any]], stage: str) -> dict[str, dict[str, Any]]:
    """The running applications of every other stage: an apply of `stage` carries them as they are."""
    return {name: app for name, app in running.items() if stage_of(name) != stage}


def deployed(details: Mapping[str, Any], stage: str) -> list[str]:
    """The applications of `stage` on the cluster (Serve's details), those being deleted left out."""
    apps = details.get("applications") or {}
    return [name for name, app in apps.items() if stage_of(name) == stage and app.get("status") != "DELETING"]
