"""The ``llmrec`` command: train (``llmrec key=value ...``, as ``python -m lightning_modules.run``) or
ask a finished run.

    llmrec recommend RUN_DIR --user ID [--k 10] [--json]
    llmrec recommend RUN_DIR --history ID,ID,... [--k 10] [--json]
    llmrec recommend RUN_DIR --user ID [--candidates ID,...] [--mode score|generate]   # an align_stage2 run
    llmrec explain RUN_DIR --user ID [--k 10] [--json]                                 # a face run
    llmrec ids RUN_DIR --items | --users [--limit N]

A readable table by default, JSON lines with ``--json``. Bad input (an unknown id, a folder that is
not a finished run, a call the run's stage cannot answer, a stale run) is one message and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from lightning_modules import run as train
from lightning_modules.inference import FACERecommender, LLMRecommender, RequestError, load_run, ranking_json

COMMANDS = ("recommend", "explain", "ids")
log = logging.getLogger("llmrec")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmrec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("recommend", help="the best items for a user or an item history")
    rec.add_argument("run_dir")
    who = rec.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a raw user id")
    who.add_argument("--history", help="comma-separated raw item ids, oldest first (a user the data has not seen)")
    rec.add_argument("--k", type=int, default=10)
    rec.add_argument("--candidates", help="align_stage2: comma-separated raw item ids to rank (default: the test candidates)")
    rec.add_argument("--mode", choices=("score", "generate"), default="score", help="align_stage2: rank by score, or also generate")
    rec.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    exp = sub.add_parser("explain", help="a face run: the user's descriptor words, then each recommended item's")
    exp.add_argument("run_dir")
    exp.add_argument("--user", required=True)
    exp.add_argument("--k", type=int, default=10)
    exp.add_argument("--json", action="store_true")
    ids = sub.add_parser("ids", help="raw ids the run knows")
    ids.add_argument("run_dir")
    kind = ids.add_mutually_exclusive_group(required=True)
    kind.add_argument("--items", action="store_const", const="items", dest="kind")
    kind.add_argument("--users", action="store_const", const="users", dest="kind")
    ids.add_argument("--limit", type=int, default=20, help="how many (0 = all)")
    return parser


def _table(ranking, words: bool) -> str:
    rows = [f"{'rank':>4}  {'item_id':<14} {'score':>10}  title"]
    for rank, rec in enumerate(ranking, start=1):
        rows.append(f"{rank:>4}  {rec.item_id:<14} {rec.score:>10.4f}  {rec.title}")
        if words and rec.words:
            rows.append(f"{'':>4}  {'':<14} {'':>10}  words: {' '.join(rec.words)}")
    if ranking.answer is not None:
        rows.append(f"answer: {ranking.answer!r} -> {ranking.named_item_id or 'no candidate'}")
    return "\n".join(rows)


def _split(ids: str | None) -> list[str] | None:
    return None if ids is None else [i.strip() for i in ids.split(",") if i.strip()]


def ask(args: argparse.Namespace) -> str:
    """The command's output for ``args`` (parsed); raises :class:`RequestError` on bad input."""
    run = load_run(args.run_dir)
    if args.command == "ids":
        if args.limit < 0:
            raise RequestError(f"--limit must be >= 0, got {args.limit}")
        found = run.ids(args.kind, args.limit)
        if args.kind == "items":
            titles = dict(zip(run.data.item_raw, run.data.titles))
            return "\n".join(f"{i}\t{titles[i]}" for i in found)
        return "\n".join(found)
    if args.command == "explain":
        if not isinstance(run, FACERecommender):
            raise RequestError(f"{args.run_dir} is a {run.stage} run; explain needs a face run (descriptor words)")
        words = run.describe(user=args.user)
        ranking = run.recommend(user=args.user, k=args.k)
        if args.json:
            return json.dumps({"user": args.user, "words": words}) + "\n" + ranking_json(args.user, ranking)
        return f"user {args.user}: {' '.join(words)}\n{_table(ranking, words=True)}"
    user = args.user or "(history)"
    if isinstance(run, LLMRecommender):
        if args.history is not None:
            raise RequestError("an align_stage2 run ranks candidates for a known user: pass --user (and --candidates)")
        ranking = run.recommend(user=args.user, candidates=_split(args.candidates), mode=args.mode, k=args.k)
    else:
        if args.candidates is not None or args.mode != "score":
            raise RequestError(f"--candidates and --mode are for align_stage2 runs; {args.run_dir} is a {run.stage} run")
        ranking = run.recommend(user=args.user, history=_split(args.history), k=args.k)
    return ranking_json(user, ranking) if args.json else _table(ranking, words=isinstance(run, FACERecommender))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS + ("-h", "--help"):
        return train.main(argv)  # llmrec key=value ...: the training entry point
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        print(ask(args))
    except (RequestError, *train.USER_ERRORS) as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
