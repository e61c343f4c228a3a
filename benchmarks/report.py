"""Markdown table of the ``metrics.json`` files under a folder.

    python -m benchmarks.report runs/beauty/cf_pretrain
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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


def table(root: Path) -> str:
    rows = []
    for path in sorted(root.glob("**/metrics.json")):
        metrics = json.loads(path.read_text())
        name = f"{metrics.get('backbone', path.parent.name)} ({metrics.get('loss', '?')})"
        cells = []
        for key, _ in COLUMNS:
            value = metrics.get(key)
            cells.append("" if value is None else (f"{value:.4f}" if isinstance(value, float) and key.startswith("test/") else f"{value:g}"))
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    header = "| model | " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    return "\n".join([header, rule, *rows])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print(__doc__, file=sys.stderr)
        return 2
    print(table(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
