"""A run directory's life: one run per directory, resumed when interrupted, with a record of what it read.

- **One run per directory.** A run whose identity (seed, data, backbone, stage, the groups the stage
  depends on, and the trainer settings that change results) differs from the ``config.yaml`` saved
  beside results stops before touching anything, with an error that lists the differing keys and
  the two ways on: ``run_name=NAME`` (a sibling directory) or ``overwrite=true``.
- **Resume or skip.** The same config continues from ``checkpoints/last.ckpt``; once ``metrics.json``
  is written the run is finished and a rerun returns its metrics without training again.
- **Upstream records.** ``upstream.json`` records the earlier run a stage read: its directory, its
  config, and the sha256 of its ``config.yaml`` and ``weights.pt``. A run whose upstream changed since
  (transitively) is stale: reading it or rerunning it is an error that names the command that rebuilds
  it; ``rebuild_stale=true`` (what ``make train-all`` passes) retrains it in place.
- Files are removed only by ``overwrite=true`` and ``rebuild_stale=true``, and only the run's own
  artifacts (:data:`ARTIFACTS`); never on an exception path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from callbacks.artifacts import write_text

log = logging.getLogger("llmrec")

ARTIFACTS = (
    "checkpoints", "csv", "wandb", "metrics.json", "weights.pt", "upstream.json", "config.yaml",
    "predictions.jsonl", "descriptors.csv", "text_latents.pt",
)
"""What a run writes into its directory; ``overwrite=true`` removes these and nothing else."""
RESULTS = ("checkpoints", "metrics.json", "weights.pt")
"""A directory holding any of these holds a run worth keeping."""
IDENTITY_KEYS = ("seed", "data", "backbone", "stage")
# Trainer settings that change what is computed (device counts and logging do not).
TRAINER_IDENTITY_KEYS = ("precision", "limit_train_batches", "limit_val_batches", "limit_test_batches", "gradient_clip_val")
MAKE_TARGETS = {"cf_pretrain": "cf-pretrain", "align_stage1": "align-stage1", "align_stage2": "align-stage2", "face": "face"}


class StageArtifactError(ValueError):
    """A required earlier run is missing, stale, or was made for other data."""


class RunDirError(ValueError):
    """The run directory holds another run, or a stale one; nothing was changed."""


def is_rank_zero() -> bool:
    # Lightning's DDP launcher re-executes the entry point per rank with RANK/LOCAL_RANK set.
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: list(node) if isinstance(node, tuple) else node}  # as saved: YAML has lists only


def identity(config: dict[str, Any], stage_groups: tuple[str, ...]) -> dict[str, Any]:
    """The dotted keys of ``config`` (a plain dict) that must match for two runs to be the same run."""
    keys = IDENTITY_KEYS + stage_groups
    picked: dict[str, Any] = {k: config[k] for k in keys if k in config}
    picked["trainer"] = {k: config.get("trainer", {}).get(k) for k in TRAINER_IDENTITY_KEYS}
    return _flatten(picked)


def differing_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"key (saved A, now B)"`` for every dotted key whose value differs or exists on one side only."""
    missing = object()
    out = []
    for key in sorted(saved.keys() | current.keys()):
        old, new = saved.get(key, missing), current.get(key, missing)
        if old != new:
            show = lambda v: "absent" if v is missing else repr(v)  # noqa: E731
            out.append(f"{key} (saved {show(old)}, now {show(new)})")
    return out


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_config(path: Path) -> dict[str, Any]:
    """A saved ``config.yaml`` as a plain dict, or a :class:`RunDirError` saying it cannot be read."""
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # YAML syntax, encoding, permissions: all mean "not a config we can trust"
        raise RunDirError(f"cannot read {path} ({type(err).__name__}: {' '.join(str(err).split())})") from None
    config = OmegaConf.to_container(node) if isinstance(node, DictConfig) else None
    if not isinstance(config, dict) or not isinstance(config.get("stage"), dict):
        raise RunDirError(f"{path} is not a run's config.yaml (no stage section)")
    return config


def make_command(config: dict[str, Any], args: str = "") -> str:
    """The ``make`` command that (re)builds the run of ``config`` (a saved config), with extra ``ARGS``."""
    stage, data = config["stage"]["name"], config["data"]
    parts = [f"make {MAKE_TARGETS.get(stage, stage)}", f"DATASET={data['name']}", f"BACKBONE={config['backbone']['name']}"]
    if stage in ("align_stage2", "face"):
        parts.append(f"LLM={config['llm']['name']}")
    if data.get("data_dir"):
        parts.append(f"DATA_DIR={data['data_dir']}")
    extra = [args] if args else []
    if config.get("run_name"):
        extra.append(f"run_name={config['run_name']}")
    if config.get("paths", {}).get("run_dir"):
        extra.append(f"paths.run_dir={config['paths']['run_dir']}")
    if config["stage"].get("init_from") and stage != "cf_pretrain":
        extra.append(f"stage.init_from={config['stage']['init_from']}")
    if extra:
        parts.append(f'ARGS="{" ".join(extra)}"')
    return " ".join(parts)


def upstream_record(run_dir: Path) -> dict[str, Any]:
    """What a stage records of an earlier run it reads: directory, config, and hashes of config and weights."""
    config = load_config(run_dir / "config.yaml")
    return {
        "run_dir": str(run_dir),
        "stage": config["stage"]["name"],
        "config_sha256": sha256_file(run_dir / "config.yaml"),
        "weights_sha256": sha256_file(run_dir / "weights.pt"),
        "config": config,
    }


def _changed(record: dict[str, Any]) -> str | None:
    """Why the earlier run of ``record`` is no longer what was read, or None if it still is."""
    up = Path(record["run_dir"])
    if not (up / "weights.pt").is_file() or not (up / "config.yaml").is_file():
        return f"{up} no longer holds a finished run"
    if sha256_file(up / "config.yaml") != record["config_sha256"] or sha256_file(up / "weights.pt") != record["weights_sha256"]:
        return f"{up} has been retrained since"
    return None


def stale_reasons(run_dir: Path) -> list[str]:
    """Why the run in ``run_dir`` is stale: an upstream it recorded has changed, or is stale itself."""
    path = run_dir / "upstream.json"
    if not path.is_file():
        return []
    reasons = []
    for record in json.loads(path.read_text()).values():
        why = _changed(record)
        if why:
            reasons.append(why)
        else:
            reasons += stale_reasons(Path(record["run_dir"]))
    return reasons


def check_upstream(run_dir: Path, stage: str, hint: str) -> dict[str, Any]:
    """The saved config of the finished, fresh ``stage`` run in ``run_dir``; else a :class:`StageArtifactError`
    that says which command makes it (``hint``)."""
    if not (run_dir / "metrics.json").is_file() or not (run_dir / "weights.pt").is_file():
        # other finished runs of the same stage (e.g. other backbones), to point stage.init_from at
        siblings = sorted(str(p.parent) for p in run_dir.parent.glob("*/metrics.json")) if run_dir.parent.exists() else []
        existing = f"; finished runs there: {siblings}" if siblings else ""
        raise StageArtifactError(
            f"{run_dir} holds no finished {stage} run (no metrics.json/weights.pt); run `{hint}` first "
            f"or point stage.init_from at one{existing}"
        )
    try:
        saved = load_config(run_dir / "config.yaml")
    except RunDirError as err:
        raise StageArtifactError(f"{err}; rebuild it with `{hint}`") from None
    if saved["stage"].get("name") != stage:
        raise StageArtifactError(f"{run_dir} is a {saved['stage'].get('name')!r} run, expected {stage!r}")
    reasons = stale_reasons(run_dir)
    if reasons:
        raise StageArtifactError(
            f"{run_dir} is stale: it was built on an earlier run that changed since ({'; '.join(reasons)}). "
            f"Rebuild it with `{make_command(saved, 'rebuild_stale=true')}` (plus the PROFILE and ARGS it was made with), "
            "or run `make train-all`, which rebuilds stale stages"
        )
    return saved


def clear_run_dir(run_dir: Path) -> None:
    """Remove the run's own artifacts (:data:`ARTIFACTS`) from ``run_dir``; anything else stays."""
    for name in ARTIFACTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


@dataclass
class RunStart:
    """How a run starts: from ``resume`` (a checkpoint) or afresh; ``finished`` holds the saved metrics
    of a run that is already complete (nothing to train). Nothing is written or removed until
    :meth:`commit`, called once the stage is built, so a run that fails to build leaves the directory
    as it was."""

    run_dir: Path
    resume: Path | None = None
    finished: dict[str, Any] | None = None
    clear: bool = False  # remove the saved run's artifacts first (overwrite / rebuild_stale)
    files: dict[str, str] = field(default_factory=dict)  # name -> text: config.yaml, upstream.json

    def commit(self) -> None:
        """(Rank 0) clear the replaced run if asked, then write this run's ``config.yaml`` and ``upstream.json``."""
        if not is_rank_zero():
            return
        if self.clear:
            clear_run_dir(self.run_dir)
        for name, text in self.files.items():
            write_text(self.run_dir / name, text)


def begin_run(cfg: Any, stage_groups: tuple[str, ...], upstream: Path | None) -> RunStart:
    """Decide how the run of ``cfg`` (a :class:`~lightning_modules.config.RunConfig`) starts in its
    directory; ``upstream``: the earlier run it reads, already checked. Raises :class:`RunDirError`
    and touches nothing; :meth:`RunStart.commit` writes."""
    run_dir = cfg.run_dir
    current = OmegaConf.to_container(OmegaConf.structured(cfg))
    records = {}
    if upstream is not None:
        record = upstream_record(upstream)
        records[record["stage"]] = record
    has_results = any((run_dir / name).exists() for name in RESULTS)
    start = RunStart(run_dir)
    if cfg.overwrite and has_results:
        log.warning("overwrite=true: replacing the run in %s", run_dir)
        start.clear = True
    elif has_results:
        ways = (
            f"To keep it, give this run its own directory with run_name=NAME ({run_dir.name}-NAME beside it; later "
            f"stages read it with stage.init_from=<that directory>); to replace it, add overwrite=true"
        )
        try:
            saved = load_config(run_dir / "config.yaml")
        except RunDirError as err:
            raise RunDirError(f"{run_dir} holds results, but {err}. Nothing was changed. {ways}.") from None
        diff = differing_keys(identity(saved, stage_groups), identity(current, stage_groups))
        if diff:
            raise RunDirError(f"{run_dir} holds another run: its config.yaml differs in {'; '.join(diff)}. Nothing was changed. {ways}.")
        reasons = _stale_against(run_dir, records)
        if reasons and not cfg.rebuild_stale:
            raise RunDirError(
                f"{run_dir} holds a stale run: {'; '.join(reasons)}. Nothing was changed. Retrain it on the current "
                f"upstream by adding rebuild_stale=true: `{make_command(current, 'rebuild_stale=true')}` with this "
                "run's PROFILE and ARGS (make train-all does this), or keep it "
                "and write the new run elsewhere with run_name=NAME"
            )
        if reasons:
            log.warning("rebuild_stale=true: retraining %s (%s)", run_dir, "; ".join(reasons))
            start.clear = True
        elif (run_dir / "metrics.json").is_file():
            start.finished = json.loads((run_dir / "metrics.json").read_text())
            log.info("%s is finished; its metrics are in metrics.json (overwrite=true trains it again)", run_dir)
            return start
        elif (run_dir / "checkpoints" / "last.ckpt").is_file():
            if not cfg.resume:
                raise RunDirError(
                    f"{run_dir} holds checkpoints of an unfinished run and resume=false would replace them. "
                    f"Nothing was changed. Drop resume=false to continue it. {ways}."
                )
            start.resume = run_dir / "checkpoints" / "last.ckpt"
            log.info("resuming from %s", start.resume)
    start.files = {
        "config.yaml": OmegaConf.to_yaml(current),
        "upstream.json": json.dumps(records, indent=2, sort_keys=True) + "\n",
    }
    return start


def _stale_against(run_dir: Path, records: dict[str, dict[str, Any]]) -> list[str]:
    """How the upstream recorded in ``run_dir`` differs from what this run reads now (``records``)."""
    path = run_dir / "upstream.json"
    if not path.is_file():  # a run from before upstream records: nothing to compare against
        log.warning("%s has no upstream.json (it predates upstream records); its upstream is not checked", run_dir)
        return []
    saved = json.loads(path.read_text())
    reasons = []
    for stage in sorted(saved.keys() | records.keys()):
        old, new = saved.get(stage), records.get(stage)
        if old is None or new is None:
            reasons.append(f"it read {'no' if old is None else 'a'} {stage} run then and {'one' if new else 'none'} now")
        elif old["run_dir"] != new["run_dir"]:
            reasons.append(f"it read {old['run_dir']} and this run reads {new['run_dir']}")
        elif (old["config_sha256"], old["weights_sha256"]) != (new["config_sha256"], new["weights_sha256"]):
            reasons.append(f"{new['run_dir']} has been retrained since")
    return reasons
