"""Hub-word read-outs of a trained FACE mapper, scored on validation users only (issue 15).

    python -m benchmarks.face_readout runs/beauty/face/sasrec/smollm2

The mapper gives each slot the nearest word (distinct within an entity). Some words are near most
items' concepts (hubs: "criticizing" is in 84% of Beauty items' words). Two corrections are tried
on the trained mapper, without retraining:

- ``csls``: CSLS (Conneau et al., ICLR 2018): a word's score is its cosine minus ``p`` times its mean
  cosine to its 10 nearest concepts among the seen items' concepts;
- ``center``: each slot's concepts minus ``p`` times that slot's mean concept over all items.

For each, the stage's own validation measure (``val/interpretability/acc@1`` on seen targets,
``_heldout`` on held-out ones, the same 2,000 seeded validation users) and the readability figures
over every item. No test user is read. Prints one JSON line per read-out; with ``--judge N``, then one
line of the stage's LLM judge on N seen and N held-out validation targets (of every validation user),
with random words and the ceiling on the held-out ones (``val/judge*/acc@1``).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from aligners.vq_descriptor import greedy_distinct_nearest
from callbacks.intervals import mean_intervals
from lightning_modules.face_outputs import draw_candidates, encode_texts, judged_sets, readability
from lightning_modules.inference import load_run

READOUTS = (("nearest", 0.0), ("csls", 0.5), ("csls", 1.0), ("csls", 1.5), ("center", 0.5), ("center", 1.0))


@torch.no_grad()
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a finished face run")
    parser.add_argument("--judge", type=int, default=0, help="also run the stage's judge on this many seeded seen and held-out validation targets")
    args = parser.parse_args(argv)
    run = load_run(args.run_dir)
    module, mapper = run.module, run.module.mapper
    items = torch.arange(1, module.backbone.num_items + 1, device=module.device)
    z = module.item_concepts()
    codes, dim = mapper.mapped_codebook(), mapper.word_dim
    seen = z[~module.heldout[items]].reshape(-1, dim)
    top = torch.cat([(codes @ seen[b : b + 16384].T / dim).topk(10, 1).values for b in range(0, len(seen), 16384)], 1)
    hubness = top.topk(10, 1).values.mean(1)  # [K]: mean cosine to the 10 nearest seen concepts
    centre = z.mean(0, keepdim=True)  # [1, n, d_w]

    def readout(kind: str, p: float):
        def nearest(z_e: torch.Tensor) -> torch.Tensor:
            if kind == "center":
                z_e = F.normalize(z_e - p * centre.to(z_e), dim=-1) * dim**0.5
            sims = z_e @ codes.T / dim - mapper.word_bias  # the stage's own lookup penalties (zero unless balanced)
            return greedy_distinct_nearest(-(sims - p * hubness if kind == "csls" else sims))
        return nearest

    titles = [t or "" for t in run.data.titles[1:]]
    stage_nearest = mapper.nearest
    for kind, p in READOUTS:
        mapper.nearest = readout(kind, p)
        figures = module.val_interpretability()
        words = mapper.explain(torch.cat([mapper.nearest(z[b : b + 1024]) for b in range(0, len(z), 1024)]))
        print(json.dumps({"readout": kind, "p": p, **figures, **readability(words, titles)}), flush=True)
    mapper.nearest = stage_nearest
    if args.judge > 0:
        print(json.dumps(validation_judge(module, run.cfg, run.data, args.judge)), flush=True)


@torch.no_grad()
def validation_judge(module, cfg, data, rows: int) -> dict[str, float]:
    """The stage's PMI judge on validation targets: the stage's read-out of ``rows`` seeded seen and
    ``rows`` held-out targets, drawn from every validation user (the 2,000 of ``val/interpretability``
    hold only about 280 held-out targets), each against 9 seeded random candidates; on the held-out
    rows also random words and the ceiling (the words nearest to the title's own text embedding). No
    test user is read: a judge figure to tune on."""
    targets = data.valid_candidates[data.split_users("val"), 0]
    candidates = draw_candidates(targets, data.num_items, cfg.stage.interpretability_candidates, cfg.data.eval_seed)
    held = module.heldout.cpu()[targets]
    item_words = module.mapper.explain(module.describe(module.backbone.item_embeddings().float()[1:]))
    words, k = module.mapper.words, cfg.stage.num_words
    rng = np.random.default_rng(cfg.data.eval_seed)
    word_text = module.word_text.cpu() if module.word_text is not None else encode_texts(
        module.reader, words, cfg.text_encoder.batch_size, cfg.stage.text_dtype, "words").cpu()
    hits, held_rows, _ = judged_sets(
        cfg, data, item_words, candidates, held, module.item_text.cpu(), word_text, words,
        lambda control: [[words[j] for j in rng.choice(len(words), k, replace=False)] for _ in control],
        rows, rows, module.device,
    )
    # with as many control rows as held-out rows, the random words are judged on the same rows: paired
    hits["diff/judge_random"] = hits["judge_heldout"].float() - hits["judge_random"].float()
    intervals = mean_intervals({k: v.float().numpy() for k, v in hits.items()}, cfg.stage.bootstrap_resamples, cfg.data.eval_seed)
    out = {}
    for name, h in hits.items():
        out[f"val/{name}/acc@1"] = round(float(h.float().mean()), 4)
        out[f"val/{name}/acc@1_ci95"] = [round(float(v), 4) for v in intervals[name]]
    return out | {"judge_rows": len(hits["judge"]), "judge_heldout_rows": len(held_rows)}


if __name__ == "__main__":
    main()
