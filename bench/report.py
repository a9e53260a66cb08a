"""The one table (markdown), the target lines computed from it, and the files it is written to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from accounting import render as accounting_table
from servers import FASTAPI_ROWS, PEERS, SERVERS

CONNS = (1, 32)
HEADER = ("server", "conns", "RPS", "p50 ms", "p99 ms", "errors", "vs best peer", "% of batched limit")
#: The tuned Ray Serve and LitServe rows are compared without a target (the targets are against FASTAPI_ROWS).
COMPARED = ("raytuned", "litserve")


def _rounds(data: dict[str, Any], name: str) -> list[dict[str, Any]]:
    rounds: list[dict[str, Any]] = data["servers"].get(name, {}).get("rounds", [])
    return rounds


def _best_round(data: dict[str, Any], name: str, conns: int) -> dict[str, Any] | None:
    """The round with the most RPS at `conns` (the rounds are interleaved, so the best is the least disturbed)."""
    done = [r for r in _rounds(data, name) if str(conns) in r.get("runs", {})]
    return max(done, key=lambda r: r["runs"][str(conns)]["rps"]) if done else None


def _run(data: dict[str, Any], name: str, conns: int) -> dict[str, Any] | None:
    best = _best_round(data, name, conns)
    return best["runs"][str(conns)] if best else None


def _best_peer(data: dict[str, Any], conns: int, key: str, lowest: bool = False) -> tuple[str, dict[str, Any]] | None:
    runs = [(n, r) for n in PEERS if (r := _run(data, n, conns))]
    if not runs:
        return None
    return (min if lowest else max)(runs, key=lambda nr: nr[1][key])


def _limit(data: dict[str, Any]) -> float | None:
    inproc = data.get("inprocess")
    return float(inproc["best"]) if inproc else None


def _each_round(data: dict[str, Any], name: str, conns: int) -> str:
    """Every round's 'RPS p50/p99' at `conns`, in order, joined by ' / '."""
    cells = []
    for r in _rounds(data, name):
        run = r.get("runs", {}).get(str(conns))
        cells.append(f"{run['rps']:,.0f} {run['p50_ms']:.2f}/{run['p99_ms']:.2f}" if run else "FAILED")
    return " / ".join(cells)


def _header(data: dict[str, Any]) -> tuple[str, ...]:
    n = max((len(s.get("rounds", [])) for s in data["servers"].values()), default=1)
    return (*HEADER, " / ".join(f"round {i}" for i in range(1, n + 1)) + ": RPS p50/p99 ms")


def rows(data: dict[str, Any]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    limit = _limit(data)
    if inproc := data.get("inprocess"):
        batch1 = (f"batch 1, {_threads(inproc['batch1_threads'])}", inproc["batch1"])
        top = (f"batch {inproc['best_batch']} (best), {_threads(inproc['best_threads'])}", inproc["best"])
        for label, value in (batch1, top):
            cells = (f"{value:,.0f}", "-", "-", "-", "-", _pct(value, limit), "-")
            out.append((f"in-process `forward`, {label}", "-", *cells))
    for name, (label, _) in SERVERS.items():
        if name not in data["servers"]:
            continue
        if all(_run(data, name, conns) is None for conns in CONNS):
            out.append((label, "-", "FAILED", "-", "-", "-", "-", "-", _each_round(data, name, CONNS[0])))
            continue
        for conns in CONNS:
            run, best = _run(data, name, conns), _best_peer(data, conns, "rps")
            if run is None:
                continue
            ratio = f"{run['rps'] / best[1]['rps']:.2f}x" if best else "-"
            cells = (f"{run['rps']:,.0f}", f"{run['p50_ms']:.2f}", f"{run['p99_ms']:.2f}", str(run["errors"]))
            out.append((label, str(conns), *cells, ratio, _pct(run["rps"], limit), _each_round(data, name, conns)))
    return out


def _threads(n: int) -> str:
    return "1 BLAS thread" if n == 1 else f"{n} BLAS threads"


def _pct(value: float, limit: float | None) -> str:
    return f"{100 * value / limit:.0f}%" if limit else "-"


def markdown(data: dict[str, Any]) -> str:
    header = _header(data)
    table = [header, tuple("---" for _ in header), *rows(data)]
    return "\n".join("| " + " | ".join(row) + " |" for row in table)


def _fastapi(data: dict[str, Any], conns: int, key: str, lowest: bool) -> tuple[str, dict[str, Any]] | None:
    """The faster FastAPI row at `conns` (most RPS, or lowest `key`), so a target never meets the slower idiom."""
    runs = [(n, r) for n in FASTAPI_ROWS if (r := _run(data, n, conns))]
    if not runs:
        return None
    return (min if lowest else max)(runs, key=lambda nr: nr[1][key])


def targets(data: dict[str, Any]) -> list[tuple[str, bool | None]]:
    """Issue 24's targets against the faster FastAPI row, each as (text, MET / NOT MET / None when a row
    it needs was not measured)."""
    peer32, peer1 = _fastapi(data, 32, "rps", lowest=False), _fastapi(data, 1, "p50_ms", lowest=True)
    out: list[tuple[str, bool | None]] = []
    rows = (
        ("modelserve", "batched", 1.5),
        ("legacy", "original-template", 1.0),
        ("auto", "original-template, replicas = auto", 1.0),
    )
    for name, who, factor in rows:
        out.append(_rps_target(who, _run(data, name, 32), peer32, factor))
        out.append(_p50_target(who, _run(data, name, 1), peer1))
    return out


def _rps_target(who: str, run: dict[str, Any] | None, peer: tuple[str, dict[str, Any]] | None, factor: float) -> Any:
    """32 connections: RPS at least `factor` x the peer's, p99 no worse than its p99."""
    if not (run and peer):
        return (f"32 conns: {who} RPS >= {factor:.1f}x the faster FastAPI row, p99 <= its p99", None)
    name, fast = peer
    text = (
        f"32 conns: {who} RPS {run['rps']:,.0f} >= {factor:.1f}x {name} {fast['rps']:,.0f} "
        f"({run['rps'] / fast['rps']:.2f}x) and p99 {run['p99_ms']:.2f} ms <= its {fast['p99_ms']:.2f} ms"
    )
    return (text, run["rps"] >= factor * fast["rps"] and run["p99_ms"] <= fast["p99_ms"])


def _p50_target(who: str, run: dict[str, Any] | None, peer: tuple[str, dict[str, Any]] | None) -> Any:
    """1 connection: p50 within 0.5 ms of the faster FastAPI row's."""
    if not (run and peer):
        return (f"1 conn: {who} p50 <= the faster FastAPI row's p50 + 0.5 ms", None)
    name, fast = peer
    text = f"1 conn: {who} p50 {run['p50_ms']:.2f} ms <= {name} p50 {fast['p50_ms']:.2f} + 0.5 ms"
    return (text, run["p50_ms"] <= fast["p50_ms"] + 0.5)


def comparisons(data: dict[str, Any]) -> list[str]:
    """modelserve against the tuned Ray Serve and LitServe rows, and the in-process limit: no target."""
    out = []
    for name in COMPARED:
        parts = []
        for conns in CONNS:
            ms, other = _run(data, "modelserve", conns), _run(data, name, conns)
            if ms and other:
                ratio = ms["rps"] / other["rps"]
                parts.append(
                    f"{conns} conn(s) RPS {ratio:.2f}x, p50 {ms['p50_ms'] - other['p50_ms']:+.2f} ms, "
                    f"p99 {ms['p99_ms'] - other['p99_ms']:+.2f} ms"
                )
        if parts:
            out.append(f"modelserve vs {SERVERS[name][0]}: {'; '.join(parts)}")
    ms32, limit = _run(data, "modelserve", 32), _limit(data)
    if ms32 and limit:
        out.append(f"modelserve at 32 conns: {100 * ms32['rps'] / limit:.0f}% of the in-process batched limit")
    return out


def target_lines(data: dict[str, Any]) -> list[str]:
    marks = {True: "MET", False: "NOT MET", None: "n/a"}
    return [f"{marks[ok]:>7}  {text}" for text, ok in targets(data)]


def cpu_lines(data: dict[str, Any]) -> list[str]:
    lines = []
    for name, (label, _) in SERVERS.items():
        best = _best_round(data, name, 32) or {}
        if best.get("cpu32"):
            wrk_cpu = best["runs"]["32"].get("wrk_cpu", 0)
            lines.append(f"- {label}: {', '.join(best['cpu32'])}; wrk {100 * wrk_cpu:.0f}%")
    return lines


def render(data: dict[str, Any]) -> str:
    meta = data["meta"]
    head = (
        f"modelserve benchmark, {meta['date']}: {meta['cpus']} CPUs, wrk {meta['duration_s']:g} s per row, "
        f"{meta.get('rounds', 1)} interleaved round(s), the best shown, "
        f"{meta['wall_s']:.0f} s in all; load average {meta['load_before']} before, {meta['load_after']} after"
    )
    parts = [
        head,
        "",
        markdown(data),
        "",
        "Targets (issue 24, against the faster FastAPI row):",
        "```",
        *target_lines(data),
        "```",
    ]
    if compared := comparisons(data):
        parts += ["", "Without a target:", *[f"- {line}" for line in compared]]
    if float(meta["load_before"].split()[0]) > 0.5:
        parts += ["", "Note: other work was running on this machine (load average above): expect noisy numbers."]
    if cpu := cpu_lines(data):
        parts += ["", "CPU during the 32-conn run (100% = one core):", *cpu]
    if account := data.get("accounting"):
        parts += ["", f"CPU accounting FAILED: {account['error']}" if "error" in account else accounting_table(account)]
    return "\n".join(parts) + "\n"


def write(data: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latest.md").write_text(render(data))
    extra = {"targets": targets(data), "comparisons": comparisons(data)}
    (out_dir / "latest.json").write_text(json.dumps({**data, **extra}, indent=2) + "\n")
    return out_dir / "latest.md"
