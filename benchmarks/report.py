"""Markdown tables of the ``metrics.json`` files under a folder.

    python -m benchmarks.report runs/beauty [--wandb]

It also writes ``<folder>/report/index.html`` with plots (``benchmarks/report_html.py``).
``--wandb`` also logs a W&B run (job type ``report``, group = the dataset) with a table of every
stage's test Hit@1 and NDCG@10 and a bar chart of each (offline without an account).

CF pretraining runs share one table (both protocols). Each A-LLMRec stage-2 run gets its own
table: the CF backbone, the LLM-only baseline and A-LLMRec in both modes, all on the same test
users and frozen candidates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.report_html import write_html

COLUMNS = (
    ("test/hit@1", "Hit@1"),
    ("test/hit@10", "Hit@10"),
    ("test/ndcg@10", "NDCG@10"),
    ("test/mrr", "MRR"),
    ("test/full/hit@10", "full Hit@10"),
    ("test/full/ndcg@10", "full NDCG@10"),
    ("test/full/hit@20", "full Hit@20"),
    ("epochs", "epochs"),
    ("seconds_per_epoch", "s/epoch"),
    ("train_seconds", "train s"),
)

MULTI_TARGET_COLUMNS = (
    ("test/full/recall@5", "Recall@5"),
    ("test/full/ndcg@5", "NDCG@5"),
    ("test/full/recall@10", "Recall@10"),
    ("test/full/ndcg@10", "NDCG@10"),
    ("test/full/recall@20", "Recall@20"),
    ("test/full/ndcg@20", "NDCG@20"),
    *COLUMNS[-3:],
)
"""Columns for multi-target data (``rlmrec``): full ranking only, RLMRec's metrics."""


LLM_COLUMNS = (("hit@1", "Hit@1"), ("hit@5", "Hit@5"), ("hit@10", "Hit@10"), ("ndcg@10", "NDCG@10"), ("mrr", "MRR"))


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}"


def _ci(metrics: dict, key: str) -> str:
    low, high = metrics.get(f"{key}_ci95_low"), metrics.get(f"{key}_ci95_high")
    return "" if low is None else f"[{low:.4f}, {high:.4f}]"


def llm_table(metrics: dict) -> str:
    """A-LLMRec against its baselines on one stage-2 run's test users."""
    rows = [
        (f"{metrics.get('backbone', '?')} (CF backbone)", "test/backbone/", None),
        ("LLM-only, score", "test/llm_only/", None),
        ("LLM-only, generate", None, "test/llm_only/generate/"),
        ("A-LLMRec, score", "test/", None),
        ("A-LLMRec, generate", None, "test/generate/"),
        ("A-LLMRec, candidate vectors shuffled, score", "test/shuffled/", None),
        ("A-LLMRec text-path items, score", "test/text_items/", None),
    ]
    header = (
        "| model | " + " | ".join(t for _, t in LLM_COLUMNS)
        + " | Hit@1 95% interval | cold Hit@1 | warm Hit@1 | paper cold / warm Hit@1 | valid answers |"
    )
    lines = [header, "|---|" + "---:|" * (len(LLM_COLUMNS) + 5)]
    for name, prefix, gen in rows:
        if prefix is not None and f"{prefix}hit@1" not in metrics:
            continue
        if gen is not None and f"{gen}hit@1" not in metrics:
            continue
        key = f"{prefix if prefix is not None else gen}hit@1"
        interval = _ci(metrics, key)
        if prefix is not None:
            cells = [_fmt(metrics.get(f"{prefix}{k}")) for k, _ in LLM_COLUMNS]
            cold = _fmt(metrics.get(f"{prefix}cold/hit@1"))
            warm = _fmt(metrics.get(f"{prefix}warm/hit@1"))
            paper = f"{_fmt(metrics.get(f'{prefix}paper_cold/hit@1'))} / {_fmt(metrics.get(f'{prefix}paper_warm/hit@1'))}"
            valid = ""
        else:
            cells = [_fmt(metrics.get(f"{gen}hit@1"))] + [""] * (len(LLM_COLUMNS) - 1)
            cold = warm = paper = ""
            valid = _fmt(metrics.get(f"{gen}valid_answer_rate"))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {interval} | {cold} | {warm} | {paper} | {valid} |")
    diffs = [
        f"{other}: {metrics[f'test/diff/{other}/hit@1']:+.4f} {_ci(metrics, f'test/diff/{other}/hit@1')}"
        for other in ("llm_only", "shuffled", "text_items", "backbone")
        if f"test/diff/{other}/hit@1" in metrics
    ]
    if diffs:
        lines.append("\nA-LLMRec Hit@1 minus, paired over the same users (95% bootstrap interval): " + "; ".join(diffs))
    lines.append(
        f"\n{metrics.get('num_test_users')} test users, {metrics.get('num_train_users')} training users, "
        f"{metrics.get('epochs')} epoch(s), LLM {metrics.get('llm')}, train {metrics.get('train_seconds')} s, "
        f"test {metrics.get('test_seconds')} s"
    )
    return "\n".join(lines)


def table(root: Path) -> str:
    runs = []
    for path in sorted(root.glob("**/metrics.json")):
        metrics = json.loads(path.read_text())
        if metrics.get("stage", "cf_pretrain") == "cf_pretrain":
            runs.append((path, metrics))
    multi_target = any("test/full/recall@20" in metrics for _, metrics in runs)
    columns = MULTI_TARGET_COLUMNS if multi_target else COLUMNS
    rows = []
    for path, metrics in runs:
        name = f"{metrics.get('backbone', path.parent.name)} ({metrics.get('loss', '?')})"
        cells = []
        for key, _ in columns:
            value = metrics.get(key)
            cells.append("" if value is None else (f"{value:.4f}" if isinstance(value, float) and key.startswith("test/") else f"{value:g}"))
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    header = "| model | " + " | ".join(title for _, title in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    return "\n".join([header, rule, *rows])


def stage_rows(root: Path) -> list[list]:
    """``[run, Hit@1, NDCG@10]`` per run under ``root`` (sampled protocol; stage 2: A-LLMRec, score mode)."""
    rows = []
    for path in sorted(root.glob("**/metrics.json")):
        metrics = json.loads(path.read_text())
        if "test/hit@1" in metrics:
            name = "/".join(str(metrics[k]) for k in ("stage", "backbone", "llm") if metrics.get(k))
            rows.append([name or str(path.parent.relative_to(root)), metrics["test/hit@1"], metrics.get("test/ndcg@10")])
    return rows


def log_wandb(root: Path, rows: list[list], project: str = "llmrec-lightning") -> None:
    """One W&B run comparing the stages of the dataset in ``root`` (mode as in callbacks.loggers)."""
    import wandb

    from callbacks.loggers import resolve_wandb_mode

    dataset = root.name
    run = wandb.init(project=project, group=dataset, job_type="report", name=f"{dataset}-report", dir=str(root), mode=resolve_wandb_mode())
    table = wandb.Table(columns=["run", "Hit@1", "NDCG@10"], data=rows)
    run.log(
        {
            "stages": table,
            "hit@1_by_stage": wandb.plot.bar(table, "run", "Hit@1", title=f"{dataset}: test Hit@1 by stage"),
            "ndcg@10_by_stage": wandb.plot.bar(table, "run", "NDCG@10", title=f"{dataset}: test NDCG@10 by stage"),
        }
    )
    run.finish()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    to_wandb = "--wandb" in args
    args = [a for a in args if a != "--wandb"]
    if len(args) != 1 or not Path(args[0]).is_dir():
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(args[0])
    tables = [table(root)]
    for path in sorted(root.glob("**/align_stage2/**/metrics.json")):
        tables.append(f"\n### {path.parent}\n\n" + llm_table(json.loads(path.read_text())))
    print("\n".join(tables))
    print(f"\nwrote {write_html(root, chr(10).join(tables))}")
    if to_wandb:
        log_wandb(root, stage_rows(root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
