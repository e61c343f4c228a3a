"""The HTML report of a dataset's runs: ``runs/<dataset>/report/index.html``, static, with PNG plots.

    python -m benchmarks.report runs/beauty          # also writes runs/beauty/report/index.html

- Test Hit@1 per model with a 95% interval: the run's own interval where ``metrics.json`` has one
  (``<key>_ci95``, a ``[low, high]`` pair), else Wilson's binomial interval over its test users.
- Full-ranking NDCG@10 per model, with the run's interval where it has one (a mean of per-user values
  has no binomial interval).
- The per-epoch validation curves of every run, from its ``csv/metrics.csv``.
- For FACE runs: the descriptor words of a few items beside their titles.
"""

from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

CURVES = ("val/full/ndcg@10", "val/ndcg@10", "val/hit@1", "val/full/recall@20")


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's 95% interval of a proportion ``p`` over ``n`` trials."""
    if n <= 0:
        return p, p
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _runs(root: Path) -> list[tuple[Path, dict]]:
    return [(p, json.loads(p.read_text())) for p in sorted(root.glob("**/metrics.json")) if "report" not in p.parts]


def _interval(m: dict, key: str) -> list[float] | None:
    """A run's own 95% interval of ``key`` (``<key>_ci95_low`` and ``_ci95_high``, as stage 2 writes them), if any."""
    if f"{key}_ci95_low" not in m:
        return None
    return [m[f"{key}_ci95_low"], m[f"{key}_ci95_high"]]


def model_rows(root: Path) -> list[dict]:
    """One row per model and run: ``name``, ``hit@1`` with its interval, ``ndcg@10`` (full) with its interval if any."""
    rows = []
    for path, m in _runs(root):
        n = int(m.get("num_test_users") or m.get("num_eval_users") or 0)
        run = str(path.parent.relative_to(root))
        variants = [("", m.get("stage", "?"))]
        if m.get("stage") == "align_stage2":
            variants = [("", "A-LLMRec"), ("llm_only/", "LLM-only"), ("shuffled/", "shuffled"), ("backbone/", "CF backbone")]
        elif m.get("stage") == "face":
            variants = [("", "FACE"), ("backbone/", "backbone as loaded"), ("control/", "continued training")]
        for prefix, label in variants:
            hit = m.get(f"test/{prefix}hit@1")
            ndcg = m.get(f"test/{prefix}full/ndcg@10")
            if hit is None and ndcg is None:
                continue
            row = {"name": f"{run} · {label}", "hit@1": hit, "ndcg@10": ndcg, "n": n}
            row["hit@1_ci"] = _interval(m, f"test/{prefix}hit@1") or (wilson(hit, n) if hit is not None else None)
            row["ndcg@10_ci"] = _interval(m, f"test/{prefix}full/ndcg@10")
            rows.append(row)
    return rows


def _bars(rows: list[dict], key: str, title: str, path: Path) -> bool:
    rows = [r for r in rows if r[key] is not None]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    ax.barh(range(len(rows)), [r[key] for r in rows], color="#4c72b0")
    with_ci = [(y, r[key], r[f"{key}_ci"]) for y, r in enumerate(rows) if r[f"{key}_ci"]]
    if with_ci:  # only where an interval exists
        ys, vs, cis = zip(*with_ci)
        ax.errorbar(vs, ys, xerr=[[v - c[0] for v, c in zip(vs, cis)], [c[1] - v for v, c in zip(vs, cis)]], fmt="none", ecolor="black", capsize=3)
    ax.set_yticks(range(len(rows)), [r["name"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _curves(root: Path, path: Path) -> bool:
    fig, ax = plt.subplots(figsize=(8, 4))
    drawn = False
    for metrics_path, _ in _runs(root):
        log = metrics_path.parent / "csv" / "metrics.csv"
        if not log.is_file():
            continue
        with open(log, newline="") as fh:
            rows = list(csv.DictReader(fh))
        key = next((k for k in CURVES if rows and k in rows[0]), None)
        points = [(int(r["epoch"]), float(r[key])) for r in rows if key and r.get(key)]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, label=f"{metrics_path.parent.relative_to(root)}: {key}")
            drawn = True
    if drawn:
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation metric")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def _descriptors(root: Path, limit: int = 8) -> str:
    parts = []
    for path in sorted(root.glob("**/descriptors.csv")):
        with open(path, newline="") as fh:
            items = [r for r in csv.DictReader(fh) if r["entity_type"] == "item"][:limit]
        cells = "".join(f"<tr><td>{html.escape(r['raw_id'])}</td><td>{html.escape(r['title'])}</td><td>{html.escape(r['words'])}</td></tr>" for r in items)
        parts.append(f"<h3>{html.escape(str(path.parent.relative_to(root)))}</h3><table><tr><th>item</th><th>title</th><th>descriptor words</th></tr>{cells}</table>")
    return "".join(parts)


def write_html(root: Path, tables: str) -> Path:
    """Write ``root/report/index.html`` and its PNGs; ``tables`` is the markdown of ``benchmarks.report``."""
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = model_rows(root)
    figures = []
    if _bars(rows, "hit@1", "test Hit@1 (sampled, 1 + 19 candidates), 95% interval", out / "hit1.png"):
        figures.append(("hit1.png", "Test Hit@1 per model"))
    if _bars(rows, "ndcg@10", "test NDCG@10 (full ranking)", out / "ndcg10.png"):
        figures.append(("ndcg10.png", "Full-ranking NDCG@10 per model"))
    if _curves(root, out / "curves.png"):
        figures.append(("curves.png", "Validation curves per epoch"))
    images = "".join(f'<h2>{html.escape(t)}</h2><img src="{f}" alt="{html.escape(t)}">' for f, t in figures)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(root.name)}: results</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}img{{max-width:100%}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 6px}}pre{{font-size:12px}}</style>
</head><body><h1>{html.escape(root.name)}</h1>{images}
<h2>Tables</h2><pre>{html.escape(tables)}</pre>
{"<h2>FACE descriptors</h2>" + _descriptors(root) if list(root.glob("**/descriptors.csv")) else ""}
<script>window.addEventListener("load", () => {{
  const imgs = [...document.images];
  document.body.dataset.images = imgs.filter(i => i.complete && i.naturalWidth > 0).length + "/" + imgs.length;
}});</script>
</body></html>
"""
    (out / "index.html").write_text(page)
    return out / "index.html"
