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

from backbones.base import Backbone
from callbacks.artifacts import write_text, write_weights
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


def interpretability_accuracy(
    query: Tensor, titles: Tensor, targets: Tensor, num_candidates: int, seed: int
) -> tuple[float, Tensor]:
    """Accuracy@1 of picking each target among ``num_candidates`` items by text similarity.

    ``query [B, d]``: the encoded descriptor words for each row; ``titles [N+1, d]``: encoded item
    titles; ``targets [B]``: the items the descriptors belong to. Every row ranks its target against
    ``num_candidates - 1`` distinct random other items (seeded); ties count against the target.
    Returns ``(accuracy, candidates [B, C])``.
    """
    rng = np.random.default_rng(seed)
    num_items = titles.shape[0] - 1
    candidates = np.empty((len(targets), num_candidates), dtype=np.int64)
    candidates[:, 0] = targets.numpy()
    for row, target in enumerate(candidates[:, 0]):
        picks: list[int] = []
        while len(picks) < num_candidates - 1:
            item = int(rng.integers(1, num_items + 1))
            if item != target and item not in picks:
                picks.append(item)
        candidates[row, 1:] = picks
    cands = torch.from_numpy(candidates)
    sims = torch.einsum("bd,bcd->bc", F.normalize(query.float(), dim=-1), F.normalize(titles.float(), dim=-1)[cands])
    check_finite(sims, "interpretability accuracy")
    correct = (sims[:, 1:] >= sims[:, :1]).sum(1) == 0
    return float(correct.float().mean()), cands


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


def user_texts(data: Any, history: int) -> list[str]:
    """``[U+1]`` texts: the titles of each user's ``history`` most recent training items, oldest first."""
    texts = [""]
    n_train = data.train_length(torch.arange(data.num_users + 1))
    for user in range(1, data.num_users + 1):
        end = int(data.seq_offsets[user]) + int(n_train[user])
        items = data.seq_items[max(int(data.seq_offsets[user]), end - history) : end].tolist()
        texts.append("; ".join(" ".join(data.titles[i].split()) for i in items if data.titles[i]) or "No titles")
    return texts


def descriptors_csv(data: Any, item_words: list[list[str]], user_words: list[list[str]]) -> str:
    """``descriptors.csv``: entity_type, internal_id, raw_id, title, words (space-separated, slot order)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["entity_type", "internal_id", "raw_id", "title", "words"])
    for item, words in enumerate(item_words, start=1):
        writer.writerow(["item", item, data.item_raw[item], data.titles[item], " ".join(words)])
    for user, words in enumerate(user_words, start=1):
        writer.writerow(["user", user, data.user_raw[user], "", " ".join(words)])
    return buffer.getvalue()


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
    title_sets = [set(re.findall(r"[a-z]+", t.lower())) for t in titles]
    return {
        "distinct_words": float(len(per_item)),
        "top_word_item_share": per_item.most_common(1)[0][1] / len(item_words),
        "common_word_slot_share": sum(w in common for words in item_words for w in words) / slots,
        "title_word_share": sum(w in ts for words, ts in zip(item_words, title_sets) for w in words) / slots,
    }


def face_outputs(cfg: Any, module: Any, text_encoder: Any, data: Any) -> dict[str, float]:
    """Writes ``descriptors.csv``; returns the interpretability metrics (descriptors and the random control)."""
    s = cfg.stage
    module.eval()
    users, items = entity_vectors(module.backbone, data, cfg.data.max_len)
    words = module.mapper.words
    item_words = module.mapper.explain(module.describe(items[1:]))
    user_words = module.mapper.explain(module.describe(users[1:]))
    write_text(cfg.run_dir / "descriptors.csv", descriptors_csv(data, item_words, user_words))
    # Each test user's target item, among random others, ranked by similarity of its words to titles.
    targets = data.test_candidates[data.eval_users, 0]
    batch = cfg.text_encoder.batch_size
    titles = encode_texts(text_encoder, [t or "No title" for t in data.titles], batch, s.text_dtype, "titles", processed_dir(cfg.data) / "text_embeddings")
    unique, inverse = torch.unique(targets, return_inverse=True)
    described = encode_texts(text_encoder, [", ".join(item_words[i - 1]) for i in unique.tolist()], batch, s.text_dtype, "descriptors")
    acc, _ = interpretability_accuracy(described[inverse], titles, targets, s.interpretability_candidates, cfg.data.eval_seed)
    rng = np.random.default_rng(cfg.data.eval_seed)
    random_words = [", ".join(words[j] for j in rng.choice(len(words), s.num_words, replace=False)) for _ in range(len(targets))]
    control = encode_texts(text_encoder, random_words, batch, s.text_dtype, "random descriptors")
    acc_random, _ = interpretability_accuracy(control, titles, targets, s.interpretability_candidates, cfg.data.eval_seed)
    return {
        "test/interpretability/acc@1": acc,
        "test/interpretability_random/acc@1": acc_random,
        "num_interpretability_users": len(targets),
        "vocabulary_size": len(words),
        "distinct_item_words": len({w for ws in item_words for w in ws}),
        **{f"test/descriptors/{k}": v for k, v in readability(item_words, [t or "" for t in data.titles[1:]]).items()},
    }
