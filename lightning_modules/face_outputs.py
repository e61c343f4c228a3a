"""FACE's outputs: every entity's descriptor words (``descriptors.csv``) and how well they describe
items (interpretability accuracy against a random-word control), with the text embeddings they need."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from backbones.base import Backbone
from callbacks.artifacts import write_text, write_weights
from callbacks.intervals import mean_intervals
from callbacks.ranking import check_finite
from datamodules.batch import SeqBatch
from datamodules.cache import processed_dir
from datamodules.datamodule import gather_padded
from lightning_modules.rundir import is_rank_zero


def encode_texts(encoder: Any, texts: list[str], batch_size: int, dtype: str, desc: str, cache_dir: Path | None = None) -> torch.Tensor:
    """Text embeddings ``[len(texts), d]``; with ``cache_dir``, reused from a file named by a hash of the
    texts, the encoder's weights and the dtype (the frozen encoder gives the same vectors every run)."""
    device = next(encoder.parameters()).device
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(f"{dtype}\n{type(encoder).__name__}\n".encode())
        for param in list(encoder.parameters())[:4]:  # enough to tell encoders apart cheaply
            digest.update(param.detach().float().cpu().numpy().tobytes()[:4096])
        digest.update("\x00".join(texts).encode())
        path = cache_dir / f"{desc.replace(' ', '_')}-{digest.hexdigest()[:16]}.pt"
        if path.is_file():
            return torch.load(path, weights_only=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        out = encoder.encode(texts, batch_size, progress=True, desc=desc)
    if path is not None and is_rank_zero():
        write_weights(path, out)
    return out


def draw_candidates(targets: Tensor, num_items: int, num_candidates: int, seed: int) -> Tensor:
    """``[B, C]`` item ids: each row's target first, then ``C - 1`` distinct random other items (seeded)."""
    rng = np.random.default_rng(seed)
    candidates = np.empty((len(targets), num_candidates), dtype=np.int64)
    candidates[:, 0] = targets.numpy()
    for row, target in enumerate(candidates[:, 0]):
        picks: list[int] = []
        while len(picks) < num_candidates - 1:
            item = int(rng.integers(1, num_items + 1))
            if item != target and item not in picks:
                picks.append(item)
        candidates[row, 1:] = picks
    return torch.from_numpy(candidates)


def first_is_best(scores: Tensor, what: str) -> Tensor:
    """``[B]`` bool: column 0 (the target) scores above every other candidate; ties count against it."""
    check_finite(scores, what)
    return (scores[:, 1:] >= scores[:, :1]).sum(1) == 0


def interpretability_hits(query: Tensor, titles: Tensor, candidates: Tensor) -> Tensor:
    """``[B]`` bool: row ``b``'s encoded descriptor words ``query [B, d]`` are nearer (cosine) to the
    title embedding (``titles [N+1, d]``) of its target ``candidates[b, 0]`` than to any other candidate's."""
    sims = torch.einsum("bd,bcd->bc", F.normalize(query.float(), dim=-1), F.normalize(titles.float(), dim=-1)[candidates])
    return first_is_best(sims, "interpretability accuracy")


def heldout_items(counts: Tensor, fraction: float, seed: int, strata: int = 10) -> Tensor:
    """``[N+1]`` bool: a seeded ``fraction`` of items 1..N, stratified by popularity.

    Items are sorted by training count (``counts [N+1]``, ties in seeded random order) and cut into
    ``strata`` bands of equal size; each band gives its share of the ``round(fraction * N)`` held-out
    items (the remainders to seeded random bands), so they are as popular as the rest. The padding id
    0 is never held out."""
    if not 0 <= fraction < 1:
        raise ValueError(f"stage.text_heldout_fraction must be in [0, 1), got {fraction}")
    out = torch.zeros(len(counts), dtype=torch.bool)
    total = int(round(fraction * (len(counts) - 1)))
    if total == 0:
        return out
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(counts) - 1) + 1
    bands = np.array_split(shuffled[np.argsort(counts.numpy()[shuffled], kind="stable")], strata)
    quota = np.array([int(fraction * len(b)) for b in bands])
    quota[rng.choice(len(bands), total - quota.sum(), replace=False)] += 1
    for band, q in zip(bands, quota):
        out[torch.from_numpy(rng.choice(band, q, replace=False))] = True
    return out


def ridge_probe(x: Tensor, y: Tensor, fit: Tensor, alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0),
                folds: int = 5, seed: int = 0) -> tuple[Tensor, float]:
    """Linear read-out of ``y [N, d]`` from ``x [N, D]`` (ridge with intercept), fitted on the rows
    ``fit [N]`` (bool) only. The penalty is chosen among ``alphas`` by ``folds``-fold cross-validated
    squared error on those rows. Returns ``(predictions [N, d] for every row, alpha)``."""
    x, y = x.double(), y.double()
    rows = fit.nonzero().squeeze(1)

    def solve(train: Tensor, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
        mx, my = x[train].mean(0), y[train].mean(0)
        xc = x[train] - mx
        w = torch.linalg.solve(xc.T @ xc + alpha * torch.eye(x.shape[1], dtype=x.dtype), xc.T @ (y[train] - my))
        return w, mx, my

    order = rows[torch.from_numpy(np.random.default_rng(seed).permutation(len(rows)))]
    parts = torch.tensor_split(order, folds)
    errors = []
    for alpha in alphas:
        err = 0.0
        for k, held in enumerate(parts):
            w, mx, my = solve(torch.cat([p for j, p in enumerate(parts) if j != k]), alpha)
            err += float((((x[held] - mx) @ w + my - y[held]) ** 2).sum())
        errors.append(err)
    alpha = alphas[int(np.argmin(errors))]
    w, mx, my = solve(rows, alpha)
    return ((x - mx) @ w + my).float(), alpha


def nearest_words(vectors: Tensor, word_text: Tensor, words: list[str], k: int) -> list[list[str]]:
    """For each row of ``vectors [B, d]``, the ``k`` vocabulary words whose text embeddings
    (``word_text [V, d]``) are nearest by cosine, nearest first."""
    sims = F.normalize(vectors.float(), dim=-1) @ F.normalize(word_text.float(), dim=-1).T
    return [[words[j] for j in row] for row in sims.topk(k, dim=-1).indices.tolist()]


@torch.no_grad()
def user_vectors(backbone: Backbone, data: Any, users: Tensor, max_len: int, batch_size: int = 1024) -> Tensor:
    """CF vectors ``[len(users), D]`` of ``users``, each read from their last ``max_len`` training items."""
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    out = torch.zeros(len(users), backbone.hidden_dim)
    for begin in range(0, len(users), batch_size):
        ids = users[begin : begin + batch_size]
        n_train = data.train_length(ids)
        recent = n_train.clamp(max=max_len)
        item_seq = gather_padded(data.seq_items, data.seq_offsets[ids] + n_train - recent, recent, left=True)
        out[begin : begin + len(ids)] = backbone.encode_user(SeqBatch(user_ids=ids, item_seq=item_seq).to(device)).float().cpu()
    backbone.train(was_training)
    return out


@torch.no_grad()
def entity_vectors(backbone: Backbone, data: Any, max_len: int, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """CF vectors of every user ``[U+1, D]`` (read from their training history) and item ``[N+1, D]``."""
    users = torch.cat([torch.zeros(1, backbone.hidden_dim), user_vectors(backbone, data, torch.arange(1, data.num_users + 1), max_len, batch_size)])
    return users, backbone.item_embeddings().detach().float().cpu()


def user_texts(data: Any, history: int, hidden: Tensor | None = None) -> list[str]:
    """``[U+1]`` texts: the titles of each user's ``history`` most recent training items, oldest first,
    leaving out the items marked in ``hidden [N+1]`` (bool: items held out from text)."""
    texts = [""]
    n_train = data.train_length(torch.arange(data.num_users + 1))
    for user in range(1, data.num_users + 1):
        end = int(data.seq_offsets[user]) + int(n_train[user])
        items = data.seq_items[int(data.seq_offsets[user]) : end]
        if hidden is not None:
            items = items[~hidden[items]]
        items = items[-history:].tolist()
        texts.append("; ".join(" ".join(data.titles[i].split()) for i in items if data.titles[i]) or "No titles")
    return texts


def descriptors_csv(data: Any, item_words: list[list[str]], user_words: list[list[str]], heldout: Tensor) -> str:
    """``descriptors.csv``: entity_type, internal_id, raw_id, title, words (space-separated, slot
    order), heldout (1: an item that took part in no text loss; empty for users)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["entity_type", "internal_id", "raw_id", "title", "words", "heldout"])
    for item, words in enumerate(item_words, start=1):
        writer.writerow(["item", item, data.item_raw[item], data.titles[item], " ".join(words), int(heldout[item])])
    for user, words in enumerate(user_words, start=1):
        writer.writerow(["user", user, data.user_raw[user], "", " ".join(words), ""])
    return buffer.getvalue()


def title_words(title: str | None) -> set[str]:
    """The words of a title as descriptors are compared with them: case-folded runs of letters."""
    return set(re.findall(r"[a-z]+", (title or "").lower()))


def title_word_targets(titles: list[str | None], words: list[str], skip: Tensor) -> tuple[Tensor, Tensor]:
    """Each item's title words that are descriptor words, weighted by inverse document frequency:
    ``(ids [N+1, T], weights [N+1, T])``, ``ids`` indexing ``words``, zero-padded, each row's weights
    summing to 1 (0 where an item has no such word). ``titles[0]`` is the padding row; items with
    ``skip [N+1]`` (held out from text) get none and do not count in the frequencies. IDF,
    ``log(items / items with the word) + 0.001`` (so a word in every title keeps a trace of weight),
    keeps words in many titles ("ounce": 28% of Beauty's) from outweighing the product's type
    ("shampoo")."""
    index = {w: i for i, w in enumerate(words)}
    rows = [[] if skip[k] else sorted(index[w] for w in title_words(t) if w in index) for k, t in enumerate(titles)]
    rows[0] = []
    df = Counter(i for r in rows for i in r)
    counted = sum(1 for r in rows if r)
    ids = torch.zeros(len(rows), max(1, max(map(len, rows))), dtype=torch.long)
    weights = torch.zeros(ids.shape)
    for k, r in enumerate(rows):
        if r:
            idf = torch.tensor([np.log(counted / df[i]) + 1e-3 for i in r])
            ids[k, : len(r)] = torch.tensor(r)
            weights[k, : len(r)] = idf / idf.sum()
    return ids, weights


def readability(item_words: list[list[str]], titles: list[str], common_share: float = 0.01) -> dict[str, float]:
    """How readable a table of item descriptors is (``item_words[k]`` describes the item titled ``titles[k]``):

    - ``distinct_words``: words used at least once;
    - ``top_word_item_share``: share of items whose words include the single most used word (by items);
    - ``common_word_slot_share``: share of all word slots taken by words that more than
      ``common_share`` of the items use;
    - ``title_word_share``: share of slots whose word is a word of the item's own title (case-folded,
      letters only): words a reader could have guessed from the title.
    """
    if not item_words or len(item_words) != len(titles):
        raise ValueError(f"readability needs one title per described item, got {len(item_words)} rows and {len(titles)} titles")
    per_item = Counter(w for words in item_words for w in set(words))
    slots = sum(len(words) for words in item_words)
    common = {w for w, n in per_item.items() if n > common_share * len(item_words)}
    title_sets = [title_words(t) for t in titles]
    return {
        "distinct_words": float(len(per_item)),
        "top_word_item_share": per_item.most_common(1)[0][1] / len(item_words),
        "common_word_slot_share": sum(w in common for words in item_words for w in words) / slots,
        "title_word_share": sum(w in ts for words, ts in zip(item_words, title_sets) for w in words) / slots,
    }


def _accuracies(hits: dict[str, Tensor], resamples: int, seed: int) -> dict[str, float]:
    """``test/<name>/acc@1`` and its 95% bootstrap interval (``_ci95_low|high``) for each 0/1 array."""
    intervals = mean_intervals({k: v.numpy() for k, v in hits.items()}, resamples, seed)
    out: dict[str, float] = {}
    for name, v in hits.items():
        if len(v):
            out[f"test/{name}/acc@1"] = float(v.float().mean())
            out[f"test/{name}/acc@1_ci95_low"], out[f"test/{name}/acc@1_ci95_high"] = intervals[name]
    return out


def _differences(pairs: dict[str, tuple[Tensor, Tensor]], resamples: int, seed: int) -> dict[str, float]:
    """``test/diff/<name>/acc@1 = mean(a - b)`` over the same rows, with its paired 95% interval."""
    return _accuracies({f"diff/{name}": a.float() - b.float() for name, (a, b) in pairs.items()}, resamples, seed)


def seeded_rows(rows: Tensor, count: int, seed: int) -> Tensor:
    """A seeded subset of ``count`` of ``rows`` (all when fewer), in their order."""
    if len(rows) <= count:
        return rows
    return rows[np.sort(np.random.default_rng(seed).choice(len(rows), count, replace=False))]


def _judged(judge: Any, words: list[list[str]], candidates: Tensor, batch_size: int, desc: str) -> Tensor:
    """``[B]`` bool: the judge ranks each row's target (column 0) first among its candidates."""
    scores = [judge.rank(words[b : b + batch_size], candidates[b : b + batch_size])
              for b in tqdm(range(0, len(words), batch_size), desc=f"judge: {desc}", disable=not is_rank_zero())]
    return first_is_best(torch.cat(scores), f"judge ({desc})") if scores else torch.zeros(0, dtype=torch.bool)


def judge_outputs(cfg: Any, data: Any, item_words: list[list[str]], words_of: dict[str, list[list[str]]],
                  rows: dict[str, Tensor], candidates: Tensor, device: torch.device) -> dict[str, Tensor]:
    """The PMI judge (:mod:`aligners.judge`, the frozen ``cfg.llm``) on each named set of test rows.

    ``rows[name]``: indices into ``candidates [B, C]``; ``words_of[name]`` (optional): the words to show
    for each of those rows, by default the target's descriptor words (``item_words``). Returns the
    per-row hits ``{name: [len(rows[name])] bool}``."""
    from aligners.judge import PMIJudge
    from aligners.llm import load_llm

    s = cfg.stage
    llm, tokenizer = load_llm(cfg.llm, device)
    judge = PMIJudge(llm, tokenizer, [t or "No title" for t in data.titles], max_title_tokens=s.judge_title_tokens)
    out = {}
    for name, idx in rows.items():
        words = words_of.get(name) or [item_words[int(t) - 1] for t in candidates[idx, 0]]
        out[name] = _judged(judge, words, candidates[idx], s.judge_batch_size, name)
    return out


def judged_sets(cfg: Any, data: Any, item_words: list[list[str]], candidates: Tensor, held: Tensor, text: Tensor,
                word_text: Tensor, words: list[str], random_words: Any, per_set: int, control: int,
                device: torch.device) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """The judge (:func:`judge_outputs`) on ``per_set`` seeded rows of ``candidates [B, C]`` with seen
    targets and as many with held-out ones (``held [B]``), and on a seeded ``control`` of the held-out
    rows: ``random_words(rows)`` (one word list per row) and the ceiling, the words nearest to the
    target's own text embedding (``text [N+1, d]``). Returns ``(hits, held-out rows, control rows)``."""
    seed = cfg.data.eval_seed
    seen_rows = seeded_rows((~held).nonzero().squeeze(1), per_set, seed)
    held_rows = seeded_rows(held.nonzero().squeeze(1), per_set, seed)
    control_rows = seeded_rows(held_rows, control, seed + 1)
    ceiling = nearest_words(text[candidates[control_rows, 0]], word_text, words, cfg.stage.num_words)
    hits = judge_outputs(
        cfg, data, item_words, {"judge_random": random_words(control_rows), "judge_ceiling": ceiling},
        {"judge": seen_rows, "judge_heldout": held_rows, "judge_random": control_rows, "judge_ceiling": control_rows},
        candidates, device,
    )
    return hits, held_rows, control_rows


@torch.no_grad()
def face_outputs(cfg: Any, module: Any, text_encoder: Any, data: Any) -> dict[str, float]:
    """Writes ``descriptors.csv``; returns the interpretability metrics with their intervals: FACE's
    words on seen and held-out targets (per test user and per distinct item), the ridge probe, the
    random-word control, the judge and the readability figures."""
    s = cfg.stage
    module.eval()
    users, items = entity_vectors(module.backbone, data, cfg.data.max_len)
    words = module.mapper.words
    heldout = module.heldout.cpu()
    item_words = module.mapper.explain(module.describe(items[1:]))
    user_words = module.mapper.explain(module.describe(users[1:]))
    write_text(cfg.run_dir / "descriptors.csv", descriptors_csv(data, item_words, user_words, heldout))
    batch, cache = cfg.text_encoder.batch_size, processed_dir(cfg.data) / "text_embeddings"

    def encode(texts: list[str], desc: str, cache_dir: Path | None = None) -> Tensor:
        return encode_texts(text_encoder, texts, batch, s.text_dtype, desc, cache_dir).cpu()

    titles = encode([t or "No title" for t in data.titles], "titles", cache)
    word_text = module.word_text.cpu() if module.word_text is not None else encode(words, "words", cache)
    # Each test user's target item, among random others, ranked by similarity of words to titles.
    targets = data.test_candidates[data.eval_users, 0]
    candidates = draw_candidates(targets, data.num_items, s.interpretability_candidates, cfg.data.eval_seed)
    unique, inverse = torch.unique(targets, return_inverse=True)
    described = encode([", ".join(item_words[i - 1]) for i in unique.tolist()], "descriptors")
    face = interpretability_hits(described[inverse], titles, candidates)
    # The probe: a ridge map from the frozen (cf_pretrain) item vectors to their text, fitted on seen items.
    seen_items = ~heldout
    seen_items[0] = False
    reference = module.reference.item_embeddings().detach().float().cpu()
    predicted, alpha = ridge_probe(reference, module.item_text.cpu(), seen_items, seed=cfg.seed)
    probe_words = nearest_words(predicted[unique], word_text, words, s.num_words)
    probe = interpretability_hits(encode([", ".join(w) for w in probe_words], "probe words")[inverse], titles, candidates)
    # Random words: the same for every model, so a seeded 5,000 rows suffice (the encoder's pass over
    # every row's own random words took 3 of the stage's minutes on the 2-core CPU).
    rng = np.random.default_rng(cfg.data.eval_seed)
    random_lists = [[words[j] for j in rng.choice(len(words), s.num_words, replace=False)] for _ in range(len(targets))]
    random_rows = seeded_rows(torch.arange(len(targets)), 5000, cfg.data.eval_seed)
    random = interpretability_hits(encode([", ".join(random_lists[i]) for i in random_rows.tolist()], "random descriptors"),
                                   titles, candidates[random_rows])
    # Per distinct item: every target item once, with its own candidates.
    per_item = interpretability_hits(described, titles, draw_candidates(unique, data.num_items, s.interpretability_candidates, cfg.data.eval_seed + 1))
    held_row, held_item = heldout[targets], heldout[unique]
    hits = {
        "interpretability": face[~held_row], "interpretability_heldout": face[held_row], "interpretability_all": face,
        "interpretability_probe": probe[~held_row], "interpretability_probe_heldout": probe[held_row],
        "interpretability_random": random,
        "interpretability_items": per_item[~held_item], "interpretability_heldout_items": per_item[held_item],
    }
    pairs = {"interpretability_probe_heldout": (face[held_row], probe[held_row]), "interpretability_probe": (face[~held_row], probe[~held_row])}
    out: dict[str, float] = {"probe_ridge_alpha": alpha}
    if s.judge_users > 0:
        judged, held_rows, control_rows = judged_sets(
            cfg, data, item_words, candidates, held_row, titles, word_text, words,
            lambda rows: [random_lists[i] for i in rows.tolist()], s.judge_users, s.judge_control_users, module.device,
        )
        hits.update(judged)
        # the paired difference on the control's rows: FACE's words against random words for the same targets
        on_control = torch.isin(held_rows, control_rows)
        pairs["judge_random"] = (judged["judge_heldout"][on_control], judged["judge_random"])
    out.update(_accuracies(hits, s.bootstrap_resamples, cfg.data.eval_seed))
    out.update(_differences(pairs, s.bootstrap_resamples, cfg.data.eval_seed))
    out.update({
        "num_interpretability_users": len(targets),
        "num_interpretability_heldout_users": int(held_row.sum()),
        "num_heldout_items": int(heldout.sum()),
        "num_judge_users": len(hits.get("judge", [])),
        "num_judge_heldout_users": len(hits.get("judge_heldout", [])),
        "vocabulary_size": len(words),
        "distinct_item_words": len({w for ws in item_words for w in ws}),
        **{f"test/descriptors/{k}": v for k, v in readability(item_words, [t or "" for t in data.titles[1:]]).items()},
    })
    return out
