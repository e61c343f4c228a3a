"""FACE pilots on validation users: step the stage's own module for a few hundred steps and score the
validation users' validation targets every so often (``val/interpretability/acc@1`` on seen targets,
``_heldout`` on held-out ones, as the stage logs them) beside the ridge probe's words on the same
rows, and the readability of every item's words. Nothing is written and no test user is read; this
is how the FACE settings were chosen (README, "Choosing FACE's settings on validation users").

    python -m benchmarks.face_pilot --steps 300 --every 100 data=beauty \
        data.data_dir=../shared/data/amazon/Beauty/prepared stage.word_slot_weight=1

The arguments after the options are the usual ``key=value`` overrides (``stage=face`` is implied; the
cf_pretrain run must exist). The continued-training control is off unless ``--control`` (its
parameters are its own: it does not change FACE's figures); with it, every validation user's
full-ranking NDCG@10 under FACE's backbone, the backbone as loaded and the control; with ``--judge N``,
the stage's LLM judge at the end (``benchmarks.face_readout.validation_judge``). Prints one JSON line
per 10 steps (mean training loss) and per evaluation.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from benchmarks.face_readout import validation_judge
from benchmarks.pilot import Records, prepare, train_steps
from callbacks.ranking import full_ranks
from lightning_modules.config import compose
from lightning_modules.face import FACEModule, build_face
from lightning_modules.face_outputs import encode_texts, interpretability_hits, nearest_words, readability, ridge_probe


@torch.no_grad()
def probe_hits(module: FACEModule, cfg) -> dict[str, float]:
    """The ridge probe's words (fitted on the seen items' frozen vectors) on the validation rows."""
    seen = ~module.heldout.cpu()
    seen[0] = False
    predicted, _ = ridge_probe(module.reference.item_embeddings().detach().float().cpu(), module.item_text.cpu(), seen, seed=cfg.seed)
    targets = module.val_targets.cpu()
    words = nearest_words(predicted[targets], module.word_text.cpu(), module.mapper.words, cfg.stage.num_words)
    described = encode_texts(module.reader, [", ".join(w) for w in words], 256, cfg.stage.text_dtype, "probe words").cpu()
    hits = interpretability_hits(described, module.item_text.cpu(), module.val_candidates).float()
    held = module.heldout.cpu()[targets]
    return {"probe": round(float(hits[~held].mean()), 4), "probe_heldout": round(float(hits[held].mean()), 4)}


@torch.no_grad()
def evaluate(module: FACEModule, titles: list[str]) -> dict[str, float]:
    """The stage's validation figures (after its calibration of the word penalties, when on) and the
    readability of every item's words."""
    module.eval()
    if module.cfg.word_item_cap > 0:
        module.calibrate_words()
    out = {k.split("/")[1]: round(v, 4) for k, v in module.val_interpretability().items()}
    items = torch.arange(1, module.backbone.num_items + 1, device=module.device)
    words = module.mapper.explain(module.describe(module.backbone.item_embeddings(items).float()))
    out.update({k: round(v, 4) for k, v in readability(words, titles).items()})
    out["item_1"] = " ".join(words[0])
    module.train()
    return out


@torch.no_grad()
def validation_ndcg(module: FACEModule, batches: list) -> dict[str, float]:
    """Full-ranking NDCG@10 of the validation users' validation items under FACE's backbone, the
    backbone as loaded (``backbone``) and the continued-training control (``control``, when on)."""
    scorers = {"ndcg": module.backbone, "backbone_ndcg": module.reference} | (
        {"control_ndcg": module.control} if module.control is not None else {})
    out = {}
    for name, scorer in scorers.items():
        was_training = scorer.training
        scorer.eval()
        gains = [1 / torch.log2(r.float() + 2) * (r < 10) for b in batches
                 for r in [full_ranks(scorer.score_all(b).float(), b.candidates[:, 0], b.history)]]
        scorer.train(was_training)
        out[name] = round(float(torch.cat(gains).mean()), 5)
    return out


def pilot(overrides: list[str], steps: int, every: int, control: bool = False, judge: int = 0, out=sys.stdout) -> list[dict]:
    """Train ``steps`` steps of the stage's own losses and optimiser; evaluate every ``every`` (with
    ``control``, also the continued-training control and every validation user's full-ranking NDCG@10);
    with ``judge`` > 0, then the stage's LLM judge on that many seen and held-out validation targets."""
    cfg = compose(["stage=face", f"stage.control={str(control).lower()}", *overrides])
    prepare(cfg)
    datamodule, module, _ = build_face(cfg)
    optimiser = module.configure_optimizers()
    current = [0]  # the loop's step: no trainer gives the stage its global_step

    def negatives(count: int) -> torch.Tensor:  # the stage's draw, seeded by this loop's step
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([cfg.seed, current[0]]).generate_state(1)[0]))
        return torch.randint(1, module.backbone.num_items + 1, (count,), generator=gen)

    module._negatives = negatives
    titles = [t or "" for t in datamodule.data.titles[1:]]
    val = list(datamodule.val_dataloader()) if control else []
    records = Records(out)
    records.emit({"overrides": overrides, "validation_users": len(module.val_targets), **probe_hits(module, cfg)})
    train_steps(module, datamodule.train_dataloader(), optimiser, steps, every,
                lambda: {**evaluate(module, titles), **(validation_ndcg(module, val) if control else {})}, records,
                on_step=lambda step: current.__setitem__(0, step))
    if judge > 0:
        records.emit({"step": steps, **validation_judge(module, cfg, datamodule.data, judge)})
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--control", action="store_true", help="train the continued-training control too and compare validation NDCG@10")
    parser.add_argument("--judge", type=int, default=0, help="at the end, the stage's LLM judge on this many seen and held-out validation targets")
    args, overrides = parser.parse_known_args(argv)
    pilot(overrides, args.steps, args.every, args.control, args.judge)
    return 0


if __name__ == "__main__":
    sys.exit(main())
