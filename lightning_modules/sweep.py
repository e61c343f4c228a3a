"""Hyperparameter sweeps from native W&B sweep specs (``conf/sweep/*.yaml``) over the one entry point.

    python -m lightning_modules.sweep SPEC [--mode wandb|local] [--count N] [--agents N] [key=value ...]

- ``--mode wandb``: creates the sweep on the W&B server and starts ``wandb agent`` processes: one
  per visible GPU, each pinned to it with ``CUDA_VISIBLE_DEVICES``, or ``--agents N`` on a CPU.
- ``--mode local``: no server. W&B's own sweep engine (the ``sweeps`` package the W&B server runs)
  proposes each trial from the spec's method (grid, random or bayes) and the finished trials; each
  trial runs the spec's command in a subprocess, logging to W&B offline unless ``WANDB_MODE`` says
  otherwise. Writes ``summary.md`` and ``summary.csv`` (one row per trial, best first) to ``--out``.

Trailing ``key=value`` overrides go into every trial's command before the sweep's own parameters
(``data=beauty data.data_dir=...``), so the sweep's parameters win. Every trial writes its own run
directory (local: ``--out/trial-NNN``; W&B agents: ``<paths.runs>/sweeps/<sweep id>/<run id>``, set
by the entry point), so trials never resume or overwrite one another or the normal runs.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("llmrec.sweep")
ARG_MACROS = ("${args}", "${args_no_hyphens}", "${args_json}", "${args_no_boolean_flags}", "${args_no_equals}")


def _sweeps():
    """W&B's sweep engine, imported without its pydantic-v1 config-key warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Valid config keys have changed in V2")
        import sweeps
    return sweeps


def load_spec(path: str | Path) -> dict[str, Any]:
    """The sweep spec at ``path``, checked against W&B's schema (the ``sweeps`` package's)."""
    sweeps = _sweeps()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sweep spec at {path}; the examples are in conf/sweep/")
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: a sweep spec is a YAML mapping (method, metric, parameters, command)")
    violations = sweeps.schema_violations_from_proposed_config(spec)
    if violations:
        raise ValueError(f"{path} is not a valid W&B sweep spec:\n" + "\n".join(f"  - {v}" for v in violations))
    if "command" not in spec:
        raise ValueError(f"{path}: add a `command` that runs the entry point, e.g. [${{env}}, python, -m, lightning_modules.run, ${{args_no_hyphens}}]")
    return spec


def with_overrides(command: list[Any], overrides: list[str]) -> list[str]:
    """``command`` with ``overrides`` just before the sweep's arguments macro (else at the end)."""
    command = [str(c) for c in command]
    at = next((i for i, c in enumerate(command) if c in ARG_MACROS), len(command))
    return command[:at] + list(overrides) + command[at:]


def trial_command(command: list[str], params: dict[str, Any], program: str | None = None) -> list[str]:
    """The argv W&B's agent would run for one trial: its macros filled in as the agent fills them."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    values = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    values.update({"env": ["/usr/bin/env"], "interpreter": [sys.executable], "program": [program] if program else []})
    out: list[str] = []
    for chunk in command:
        out += values.get(chunk[2:-1], []) if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return out


def agent_env(**extra: str) -> dict[str, str]:
    """This environment with this interpreter's folder first on PATH (a spec's ``python`` is ours)."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def trial_score(run_dir: Path, metric: str) -> float | None:
    """The trial's best ``metric``: ``best_<metric>`` of its metrics.json (the tested checkpoint's
    value when ``stage.monitor`` is the metric), else the best epoch in its CSV log."""
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        value = json.loads(metrics_path.read_text()).get(f"best_{metric}")
        if value is not None:
            return float(value)
    values = []
    for path in run_dir.glob("**/metrics.csv"):
        with open(path, newline="") as fh:
            values += [float(row[metric]) for row in csv.DictReader(fh) if row.get(metric)]
    return max(values) if values else None


def summary_table(rows: list[dict[str, Any]], params: list[str], metric: str, goal: str) -> tuple[str, str]:
    """``(markdown, csv)`` of the trials, best first (failed trials last)."""
    def key(row: dict[str, Any]) -> tuple[int, float]:
        score = row[metric]
        return (score is None, 0.0 if score is None else (-score if goal == "maximize" else score))

    rows = sorted(rows, key=key)
    header = ["trial", *params, metric, "state", "seconds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        cells = [row["trial"], *(row["params"].get(p, "") for p in params), row[metric], row["state"], row["seconds"]]
        cells = ["" if c is None else (f"{c:.4g}" if isinstance(c, float) else str(c)) for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
        writer.writerow(cells)
    return "\n".join(lines) + "\n", buffer.getvalue()


def run_local(spec: dict[str, Any], overrides: list[str], count: int, out: Path) -> list[dict[str, Any]]:
    """Up to ``count`` trials proposed by W&B's sweep engine; returns one row per trial."""
    sweeps = _sweeps()

    metric, goal = spec["metric"]["name"], spec["metric"].get("goal", "minimize")
    command = with_overrides(spec["command"], overrides)
    env = agent_env(WANDB_MODE=os.environ.get("WANDB_MODE", "offline"))
    out.mkdir(parents=True, exist_ok=True)
    done: list[sweeps.SweepRun] = []
    rows: list[dict[str, Any]] = []
    for n in range(count):
        proposal = sweeps.next_run(spec, done, validate=False)
        if proposal is None:  # a grid with nothing left to try
            log.info("the %s search has no more configurations after %d trials", spec["method"], n)
            break
        params = {k: v["value"] for k, v in proposal.config.items()}
        run_dir = out / f"trial-{n:03d}"
        argv = trial_command(command, params, spec.get("program")) + [f"paths.run_dir={run_dir}"]
        log.info("trial %d (%d of %d): %s", n, n + 1, count, " ".join(f"{k}={v}" for k, v in params.items()))
        start = time.monotonic()
        with open(out / f"trial-{n:03d}.log", "w") as log_file:
            code = subprocess.run(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT).returncode
        score = trial_score(run_dir, metric) if code == 0 else None
        state = sweeps.RunState.finished if code == 0 and score is not None else sweeps.RunState.failed
        if state == sweeps.RunState.failed:
            log.warning("trial %d failed (exit code %d); its output is in %s", n, code, out / f"trial-{n:03d}.log")
        proposal.state = state
        proposal.summary_metrics = {} if score is None else {metric: score}
        proposal.name = f"trial-{n:03d}"
        done.append(proposal)
        rows.append({"trial": n, "params": params, metric: score, "state": state.value, "seconds": round(time.monotonic() - start, 1)})
        log.info("trial %d: %s = %s", n, metric, score)
    markdown, table = summary_table(rows, list(spec["parameters"]), metric, goal)
    (out / "summary.md").write_text(markdown)
    (out / "summary.csv").write_text(table)
    return rows


def visible_gpus() -> list[str]:
    """The GPU ids an agent may be pinned to: ``CUDA_VISIBLE_DEVICES`` or every CUDA device."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def run_wandb(spec: dict[str, Any], overrides: list[str], count: int | None, agents: int, project: str, entity: str) -> int:
    """Create the sweep on the W&B server and run one agent per visible GPU (else ``agents`` on CPU)."""
    import wandb

    spec = {**spec, "command": with_overrides(spec["command"], overrides)}
    sweep_id = wandb.sweep(spec, project=project, entity=entity or None)
    path = "/".join(p for p in (entity, project, sweep_id) if p)
    gpus = visible_gpus()
    env = agent_env()
    agent = [sys.executable, "-m", "wandb", "agent", *(["--count", str(count)] if count else []), path]
    procs = [subprocess.Popen(agent, env={**env, "CUDA_VISIBLE_DEVICES": g}) for g in gpus] or [
        subprocess.Popen(agent, env=env) for _ in range(agents)
    ]
    log.info("sweep %s: %d agent(s) on %s", path, len(procs), f"GPUs {','.join(gpus)}" if gpus else "the CPU")
    return max(p.wait() for p in procs)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m lightning_modules.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="a W&B sweep spec, e.g. conf/sweep/cf_pretrain_sasrec.yaml")
    parser.add_argument("--mode", choices=("wandb", "local"), default="wandb")
    parser.add_argument("--count", type=int, default=None, help="trials (local: default 4; wandb: per agent, default until the spec's run_cap)")
    parser.add_argument("--agents", type=int, default=1, help="agents on a machine without GPUs (wandb mode)")
    parser.add_argument("--out", default="", help="local mode: folder of trial runs and summary (default runs/sweeps/<spec name>)")
    parser.add_argument("--project", default="llmrec-lightning")
    parser.add_argument("--entity", default="")
    parser.add_argument("overrides", nargs="*", help="key=value overrides added to every trial")
    args = parser.parse_intermixed_args(argv)
    try:
        spec = load_spec(args.spec)
        bad = [o for o in args.overrides if "=" not in o]
        if bad:
            raise ValueError(f"overrides are key=value, got {bad}")
    except (OSError, ValueError) as err:
        log.error("%s", err)
        return 2
    if args.mode == "wandb":
        return run_wandb(spec, args.overrides, args.count, args.agents, args.project, args.entity)
    out = Path(args.out or Path("runs") / "sweeps" / Path(args.spec).stem)
    rows = run_local(spec, args.overrides, args.count or 4, out)
    print((out / "summary.md").read_text(), end="")
    log.info("wrote %s and %s", out / "summary.md", out / "summary.csv")
    return 0 if any(r["state"] == "finished" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
