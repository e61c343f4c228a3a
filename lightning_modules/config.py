"""The run configuration: OmegaConf structured configs over dataclasses, composed from ``conf/``.

Composition order (later wins): the dataclass defaults <- ``conf/<group>/<choice>.yaml`` for each
group <- ``key=value`` overrides from the command line. Struct mode makes every misspelled key an
error that names the key and the valid ones.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from aligners.llm import LLMConfig
from aligners.prompt import PromptConfig
from aligners.text_encoder import TextEncoderConfig
from backbones import BACKBONES, backbone_config
from datamodules.config import DataConfig
from lightning_modules.compute_dtypes import resolve_compute_dtypes
from lightning_modules.stages import STAGES, stage_config

CONF_DIR = Path(os.environ.get("LLMREC_CONF_DIR", Path(__file__).resolve().parents[1] / "conf"))
GROUPS = ("data", "backbone", "stage", "llm", "text_encoder", "prompt", "trainer", "logger")
DEFAULT_CHOICES = {
    "data": "synthetic",
    "backbone": "sasrec",
    "stage": "cf_pretrain",
    "llm": "smollm2",
    "text_encoder": "minilm",
    "prompt": "auto",  # conf/prompt/<dataset>.yaml when there is one, else default
    "trainer": "auto",
    "logger": "csv",
}
# Groups whose options are a registry of classes (a YAML file per option is optional).
REGISTRIES: dict[str, dict[str, Any]] = {"backbone": BACKBONES, "stage": STAGES}
# A profile (conf/profile/<name>.yaml) holds per-stage overrides, merged before the command line's.
DEFAULT_PROFILE = "full"


@dataclass
class TrainerConfig:
    """Lightning Trainer settings (the ``trainer`` group)."""

    name: str = "auto"
    accelerator: str = "auto"  # (str) cpu | gpu | auto
    devices: Any = "auto"  # (int | str) devices per node
    strategy: str = "auto"  # (str) auto | ddp (never ddp_spawn on CPU: it double-counts metrics)
    num_nodes: int = 1
    precision: str = "32-true"  # (str) 32-true | bf16-mixed | 16-mixed
    deterministic: bool = False
    max_time: str = ""  # (str) DD:HH:MM:SS wall-clock cap on fit; "" = none
    # (float) share of each epoch's batches (<= 1.0), or a count of batches (> 1, e.g. 250: Lightning's int)
    limit_train_batches: float = 1.0
    limit_val_batches: float = 1.0
    limit_test_batches: float = 1.0
    gradient_clip_val: float = 0.0
    log_every_n_steps: int = 50
    enable_progress_bar: bool = True
    num_threads: int = 0  # (int) torch intra-op CPU threads; 0 = torch's default

    def __post_init__(self) -> None:
        if self.strategy == "ddp_spawn":
            raise ValueError("trainer.strategy=ddp_spawn shares metric states between CPU ranks; use trainer.strategy=ddp")
        for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
            value = getattr(self, key)
            if value < 0 or (value > 1 and value != int(value)):
                raise ValueError(f"trainer.{key} must be a share in [0, 1] or a whole number of batches, got {value}")


@dataclass
class LoggerConfig:
    """Experiment loggers (the ``logger`` group): ``none``, ``csv`` or ``wandb`` (CSV is kept beside W&B)."""

    name: str = "csv"
    project: str = "llmrec-lightning"
    entity: str = ""
    mode: str = ""  # (str) W&B mode: online | offline | disabled; "" = online if logged in, else offline

    def __post_init__(self) -> None:
        if self.name not in ("none", "csv", "wandb"):
            raise ValueError(f"logger.name must be one of ['csv', 'none', 'wandb'], got {self.name!r}")
        if self.mode not in ("", "online", "offline", "disabled"):
            raise ValueError(f"logger.mode must be one of '', online, offline, disabled; got {self.mode!r}")


@dataclass
class PathsConfig:
    runs: str = "runs"  # (str) root of run directories runs/<dataset>/<stage>/<backbone>/
    run_dir: str = ""  # (str) explicit run directory; "" = derived from the names above


@dataclass
class RunConfig:
    """Everything one run needs. ``backbone`` and ``stage`` hold the chosen option's dataclass."""

    seed: int = 42  # (int) seed of initialisation, shuffling and training negatives
    resume: bool = True  # (bool) continue from the run directory's last checkpoint when the config matches
    run_name: str = ""  # (str) a run directory of its own beside the default one: <default>-<run_name>
    overwrite: bool = False  # (bool) replace the run saved in the run directory, whatever its config
    rebuild_stale: bool = False  # (bool) retrain a run whose upstream has changed since (make train-all sets it)
    data: DataConfig = field(default_factory=DataConfig)
    backbone: Any = None
    stage: Any = None
    llm: LLMConfig = field(default_factory=LLMConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    # Filled in by compose: each compute dtype the stage uses and why (``auto`` resolved for this device).
    compute_dtypes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.run_name and not re.fullmatch(r"[A-Za-z0-9_.-]+", self.run_name):
            raise ValueError(f"run_name may hold letters, digits, '_', '-' and '.' only (it names a directory), got {self.run_name!r}")

    @property
    def run_dir(self) -> Path:
        if self.paths.run_dir:
            return Path(self.paths.run_dir)
        run_dir = Path(self.paths.runs) / self.data.name / self.stage.name / self.backbone.name
        if "llm" in type(self.stage).groups:
            run_dir = run_dir / self.llm.name
        return run_dir.with_name(f"{run_dir.name}-{self.run_name}") if self.run_name else run_dir

    def stage_run_dir(self, stage: str) -> Path:
        """Default run directory of an earlier ``stage`` for this dataset and backbone."""
        return Path(self.paths.runs) / self.data.name / stage / self.backbone.name


def options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The options of a config group, e.g. ``options("data") -> ["beauty", "synthetic", ...]``: the
    registry's names for ``backbone`` and ``stage`` (their YAML files are optional), else the YAML files."""
    if group in REGISTRIES:
        return sorted(REGISTRIES[group])
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def parse_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split ``group=option`` choices from ``a.b=value`` overrides."""
    choices, overrides = dict(DEFAULT_CHOICES, profile=DEFAULT_PROFILE), []
    for arg in argv:
        if "=" not in arg:
            raise ValueError(f"argument {arg!r} is not of the form key=value (e.g. data=beauty, backbone.hidden_dim=64)")
        key, value = arg.split("=", 1)
        if key in GROUPS or key == "profile":
            choices[key] = value
        else:
            overrides.append(arg)
    return choices, overrides


def _override_value(overrides: list[str], key: str) -> str | None:
    for arg in overrides:
        if arg.split("=", 1)[0] == key:
            return arg.split("=", 1)[1]
    return None


def _group_yaml(group: str, choice: str, conf_dir: Path, overrides: list[str], dataset: str = "") -> tuple[Path | None, dict[str, Any]]:
    """The YAML file of ``group=choice`` (None: the dataclass defaults alone) and values merged after it."""
    if group == "prompt" and choice == "auto":
        choice = dataset if (conf_dir / "prompt" / f"{dataset}.yaml").is_file() else "default"
    path = conf_dir / group / f"{choice}.yaml"
    extra: dict[str, Any] = {}
    if group in REGISTRIES:
        if choice not in REGISTRIES[group]:
            raise ValueError(f"unknown {group} {choice!r}; expected one of {options(group)}")
        return (path if path.is_file() else None), {"name": choice}
    if not path.is_file() and group == "data":
        # Bring-your-own data: an unknown dataset name with a prepared folder uses the prepared recipe,
        # and rlmrec_<name> uses the RLMRec recipe (its folder is checked when the data is read).
        data_dir = _override_value(overrides, "data.data_dir")
        if choice.startswith("rlmrec_"):
            path, extra = conf_dir / "data" / "rlmrec.yaml", {"name": choice}
        elif data_dir and (Path(data_dir) / "interactions.csv").is_file():
            path, extra = conf_dir / "data" / "prepared.yaml", {"name": choice}
    if not path.is_file():
        hint = ""
        if group == "data":
            hint = (
                "; for your own data pass a folder with interactions.csv and items.csv as data.data_dir=<folder> "
                "(DATA_DIR=<folder>), or name it rlmrec_<name> for a folder of RLMRec's trn_mat.pkl, val_mat.pkl "
                "and tst_mat.pkl"
            )
        raise ValueError(f"unknown {group} {choice!r}; expected one of {options(group, conf_dir)}{hint}")
    return path, extra


def _friendly(err: OmegaConfBaseException, node: DictConfig, where: str, prefix: str = "") -> ValueError:
    """Turn an OmegaConf error into a ValueError naming the full key, the file and the valid keys."""
    key = getattr(err, "full_key", None) or ""
    if isinstance(err, ConfigKeyError) and key:
        parent, _, leaf = key.rpartition(".")
        try:
            sub = OmegaConf.select(node, parent) if parent else node
            valid = sorted(sub.keys()) if isinstance(sub, DictConfig) else []
        except OmegaConfBaseException:
            valid = []
        shown_parent = ".".join(p for p in (prefix, parent) if p)
        dotted = f"{shown_parent}." if shown_parent else ""
        close = difflib.get_close_matches(leaf, valid, n=1)
        suggestion = f"; did you mean {dotted}{close[0]}?" if close else ""
        return ValueError(
            f"unknown config key {dotted + leaf!r} in {where}{suggestion} Valid keys under {shown_parent or 'the root'}: {valid}"
        )
    key = ".".join(p for p in (prefix, key) if p)
    msg = str(err).splitlines()[0]
    return ValueError(f"invalid config value{' for ' + repr(key) if key else ''} in {where}: {msg}")


def compose(argv: list[str] | None = None, conf_dir: Path = CONF_DIR) -> RunConfig:
    """Build the typed :class:`RunConfig` from group choices and ``key=value`` overrides."""
    choices, overrides = parse_args(list(argv or []))
    cfg = OmegaConf.structured(RunConfig)
    with_schema = {
        "backbone": lambda name: backbone_config(name),
        "stage": stage_config,
    }
    for group in GROUPS:
        path, extra = _group_yaml(group, choices[group], conf_dir, overrides, dataset=choices["data"])
        node = OmegaConf.structured(with_schema[group](choices[group])) if group in with_schema else cfg[group]
        try:
            node = OmegaConf.merge(node, OmegaConf.load(path) if path else {}, extra)
        except OmegaConfBaseException as err:
            raise _friendly(err, node, str(path or f"the {group} defaults"), prefix=group) from None
        cfg[group] = node
    cfg = _apply_profile(cfg, choices["profile"], choices["stage"], conf_dir)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as err:
        raise _friendly(err, cfg, "the command-line overrides") from None
    try:
        run_cfg = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise _friendly(err, cfg, "the composed config") from None
    run_cfg.compute_dtypes = resolve_compute_dtypes(run_cfg)
    return run_cfg  # type: ignore[return-value]


def _apply_profile(cfg: DictConfig, profile: str, stage: str, conf_dir: Path) -> DictConfig:
    """Merge the ``<stage>:`` section of ``conf/profile/<profile>.yaml`` (if any) into ``cfg``."""
    path = conf_dir / "profile" / f"{profile}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown profile {profile!r}; expected one of {options('profile', conf_dir)}")
    section = (OmegaConf.load(path) or {}).get(stage)
    if not section:
        return cfg
    try:
        return OmegaConf.merge(cfg, section)
    except OmegaConfBaseException as err:
        raise _friendly(err, cfg, f"{path} (section {stage})") from None


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def load_run_config(path: Path) -> RunConfig:
    """The typed :class:`RunConfig` saved in ``path`` (a run's ``config.yaml``), with its stage's and
    backbone's schemas, as the run composed it (``auto`` dtypes already resolved there)."""
    saved = OmegaConf.load(path)
    cfg = OmegaConf.structured(RunConfig)
    cfg.backbone = OmegaConf.structured(backbone_config(saved.backbone.name))
    cfg.stage = OmegaConf.structured(stage_config(saved.stage.name))
    try:
        return OmegaConf.to_object(OmegaConf.merge(cfg, saved))  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise _friendly(err, cfg, str(path)) from None
