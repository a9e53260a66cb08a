"""The one table (markdown), the target lines computed from it, and the files it is written to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from servers import PEERS, SERVERS

CONNS = (1, 32)
HEADER = ("server", "conns", "RPS", "p50 ms", "p99 ms", "errors", "vs best peer", "% of batched limit")


def _run(data: dict[str, Any], name: str, conns: int) -> dict[str, Any] | None:
    run: dict[str, Any] | None = data["servers"].get(name, {}).get("runs", {}).get(str(conns))
    return run


def _best_peer(data: dict[str, Any], conns: int, key: str, lowest: bool = False) -> tuple[str, dict[str, Any]] | None:
    runs = [(n, r) for n in PEERS if (r := _run(data, n, conns))]
    if not runs:
        return None
    return (min if lowest else max)(runs, key=lambda nr: nr[1][key])


def _limit(data: dict[str, Any]) -> float | None:
    inproc = data.get("inprocess")
    return float(inproc["best"]) if inproc else None


def rows(data: dict[str, Any]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    limit = _limit(data)
    if inproc := data.get("inprocess"):
        batch1 = (f"batch 1, {_threads(inproc['batch1_threads'])}", inproc["batch1"])
        top = (f"batch {inproc['best_batch']} (best), {_threads(inproc['best_threads'])}", inproc["best"])
        for label, value in (batch1, top):
            out.append((f"in-process `forward`, {label}", "-", f"{value:,.0f}", "-", "-", "-", "-", _pct(value, limit)))
    for name, (label, _) in SERVERS.items():
        server = data["servers"].get(name)
        if server is None:
            continue
        if server.get("error"):
            out.append((label, "-", "FAILED", "-", "-", "-", "-", "-"))
            continue
        for conns in CONNS:
            run, best = _run(data, name, conns), _best_peer(data, conns, "rps")
            if run is None:
                continue
            ratio = f"{run['rps'] / best[1]['rps']:.2f}x" if best else "-"
            cells = (f"{run['rps']:,.0f}", f"{run['p50_ms']:.2f}", f"{run['p99_ms']:.2f}", str(run["errors"]))
            out.append((label, str(conns), *cells, ratio, _pct(run["rps"], limit)))
    return out


def _threads(n: int) -> str:
    return "1 BLAS thread" if n == 1 else f"{n} BLAS threads"


def _pct(value: float, limit: float | None) -> str:
    return f"{100 * value / limit:.0f}%" if limit else "-"


def markdown(data: dict[str, Any]) -> str:
    table = [HEADER, tuple("---" for _ in HEADER), *rows(data)]
    return "\n".join("| " + " | ".join(row) + " |" for row in table)


def targets(data: dict[str, Any]) -> list[tuple[str, bool | None]]:
    """Each target as (text, MET / NOT MET / None when a server it needs was not measured)."""
    ms32, ms1, limit = _run(data, "modelserve", 32), _run(data, "modelserve", 1), _limit(data)
    fast, quick = _best_peer(data, 32, "rps"), _best_peer(data, 1, "p50_ms", lowest=True)
    out: list[tuple[str, bool | None]] = []
    if ms32 and fast:
        name, peer = fast
        ok = ms32["rps"] >= 1.5 * peer["rps"] and ms32["p99_ms"] <= peer["p99_ms"]
        text = (
            f"32 conns: modelserve RPS {ms32['rps']:,.0f} >= 1.5x best peer ({name} {peer['rps']:,.0f}) "
            f"and p99 {ms32['p99_ms']:.2f} ms <= its {peer['p99_ms']:.2f} ms"
        )
        out.append((text, ok))
    else:
        out.append(("32 conns: modelserve RPS >= 1.5x best peer and p99 <= its p99", None))
    if ms1 and quick:
        name, peer = quick
        text = f"1 conn: modelserve p50 {ms1['p50_ms']:.2f} ms <= best peer ({name}) p50 {peer['p50_ms']:.2f} + 1 ms"
        out.append((text, ms1["p50_ms"] <= peer["p50_ms"] + 1.0))
    else:
        out.append(("1 conn: modelserve p50 <= best peer p50 + 1 ms", None))
    if ms32 and limit:
        text = f"32 conns: modelserve RPS {ms32['rps']:,.0f} >= 35% of in-process batched limit ({limit:,.0f}/s)"
        out.append((text, ms32["rps"] >= 0.35 * limit))
    else:
        out.append(("32 conns: modelserve RPS >= 35% of in-process batched limit", None))
    return out + _legacy_targets(data)


def _legacy_targets(data: dict[str, Any]) -> list[tuple[str, bool | None]]:
    """The original-template package: as fast as FastAPI at 32 connections, within 0.5 ms of it alone."""
    old32, old1 = _run(data, "legacy", 32), _run(data, "legacy", 1)
    fast32, fast1 = _run(data, "fastapi", 32), _run(data, "fastapi", 1)
    out: list[tuple[str, bool | None]] = []
    if old32 and fast32:
        text = f"32 conns: original-template RPS {old32['rps']:,.0f} >= 1.0x fastapi {fast32['rps']:,.0f}"
        out.append((text, old32["rps"] >= fast32["rps"]))
    else:
        out.append(("32 conns: original-template RPS >= 1.0x fastapi", None))
    if old1 and fast1:
        text = f"1 conn: original-template p50 {old1['p50_ms']:.2f} ms <= fastapi p50 {fast1['p50_ms']:.2f} + 0.5 ms"
        out.append((text, old1["p50_ms"] <= fast1["p50_ms"] + 0.5))
    else:
        out.append(("1 conn: original-template p50 <= fastapi p50 + 0.5 ms", None))
    return out


def target_lines(data: dict[str, Any]) -> list[str]:
    marks = {True: "MET", False: "NOT MET", None: "n/a"}
    return [f"{marks[ok]:>7}  {text}" for text, ok in targets(data)]


def cpu_lines(data: dict[str, Any]) -> list[str]:
    lines = []
    for name, (label, _) in SERVERS.items():
        server = data["servers"].get(name) or {}
        if server.get("cpu32"):
            run = _run(data, name, 32) or {}
            lines.append(f"- {label}: {', '.join(server['cpu32'])}; wrk {100 * run.get('wrk_cpu', 0):.0f}%")
    return lines


def render(data: dict[str, Any]) -> str:
    meta = data["meta"]
    head = (
        f"modelserve benchmark, {meta['date']}: {meta['cpus']} CPUs, wrk {meta['duration_s']:g} s per row, "
        f"{meta['wall_s']:.0f} s in all; load average {meta['load_before']} before, {meta['load_after']} after"
    )
    parts = [head, "", markdown(data), "", "Targets:", "```", *target_lines(data), "```"]
    if float(meta["load_before"].split()[0]) > 0.5:
        parts += ["", "Note: other work was running on this machine (load average above): expect noisy numbers."]
    if cpu := cpu_lines(data):
        parts += ["", "CPU during the 32-conn run (100% = one core):", *cpu]
    return "\n".join(parts) + "\n"


def write(data: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latest.md").write_text(render(data))
    (out_dir / "latest.json").write_text(json.dumps({**data, "targets": targets(data)}, indent=2) + "\n")
    return out_dir / "latest.md"
