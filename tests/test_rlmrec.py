"""The ``rlmrec`` source (RLMRec/FACE's pickled split matrices) and its multi-target full-ranking metrics.

Tiny pickles are built in ``tmp_path`` with scipy; nothing touches the network or the shared data.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from callbacks.ranking import MultiTargetNDCG, MultiTargetRecall, multi_target_metrics, multi_target_positions
from datamodules.cache import ensure_processed, load_processed
from datamodules.constants import PAD_ID
from datamodules.datamodule import EvalData, SeqDataModule
from datamodules.preprocess import preprocess_splits
from datamodules.sources import DataFormatError, MissingDataError, read_rlmrec
from lightning_modules.config import compose
from lightning_modules.run import run

NAMES = {"train": "trn_mat.pkl", "val": "val_mat.pkl", "test": "tst_mat.pkl"}


def write_matrices(folder: Path, shape: tuple[int, int], entries: dict[str, list[tuple[int, int, float]]]) -> Path:
    """Pickle one ``coo_matrix`` per split, as RLMRec ships them (float64 values)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in NAMES.items():
        rows, cols, vals = zip(*entries[split]) if entries[split] else ((), (), ())
        matrix = sp.coo_matrix((np.array(vals, dtype=np.float64), (np.array(rows), np.array(cols))), shape=shape)
        with open(folder / name, "wb") as fh:
            pickle.dump(matrix, fh, protocol=4)
    return folder


# 4 users x 6 items. User 0: train {0, 3}, val {1}, test {4, 5}; user 1: train {2}, test {0};
# user 2: train {5}, val {0}; user 3: no interaction at all. Item values as RLMRec stores them,
# plus a rating (4.0), an explicit zero (not an interaction) and a duplicate entry.
TINY = {
    "train": [(0, 3, 1.0), (0, 0, 4.0), (1, 2, 1.0), (2, 5, 1.0), (2, 5, 1.0), (1, 4, 0.0)],
    "val": [(0, 1, 1.0), (2, 0, 1.0)],
    "test": [(0, 5, 1.0), (1, 0, 1.0), (0, 4, 1.0)],
}


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    return write_matrices(tmp_path / "tiny", (4, 6), TINY)


def random_folder(folder: Path, users: int = 60, items: int = 40, per_user: int = 10, seed: int = 0) -> Path:
    """A learnable-enough random split: each user's items cut 3:1:1 into train/val/test."""
    rng = np.random.default_rng(seed)
    entries: dict[str, list[tuple[int, int, float]]] = {split: [] for split in NAMES}
    for user in range(users):
        start = rng.integers(items)
        chosen = [(start + 2 * j) % items for j in range(per_user)]  # a band of the catalogue per user
        for j, item in enumerate(chosen):
            split = "train" if j % 5 < 3 else ("val" if j % 5 == 3 else "test")
            entries[split].append((user, int(item), 1.0))
    return write_matrices(folder, (users, items), entries)


# ------------------------------------------------------------------------------------------------
# Reading and preprocessing


def test_read_rlmrec_binarises_and_sorts(tiny_folder: Path) -> None:
    raw = read_rlmrec(tiny_folder)
    assert (raw.num_users, raw.num_items) == (4, 6)
    pairs = {split: list(zip(u.tolist(), i.tolist())) for split, (u, i) in raw.splits.items()}
    # != 0: the rating counts once, the duplicate once, the explicit zero (1, 4) not at all.
    assert pairs == {"train": [(0, 0), (0, 3), (1, 2), (2, 5)], "val": [(0, 1), (2, 0)], "test": [(0, 4), (0, 5), (1, 0)]}


def test_internal_ids_are_raw_plus_one_and_splits_are_laid_out_per_user(tiny_folder: Path) -> None:
    data = preprocess_splits(read_rlmrec(tiny_folder))
    assert data.user_raw == ["<pad>", "0", "1", "2", "3"]
    assert data.item_raw == ["<pad>", "0", "1", "2", "3", "4", "5"]
    assert data.titles == [""] * 7 and data.descriptions == [""] * 7
    assert data.multi_target and not data.has_candidates
    assert data.split_counts.tolist() == [[0, 0, 0], [2, 1, 2], [1, 0, 1], [1, 1, 0], [0, 0, 0]]
    # user 1 (raw 0): train 1, 4 | val 2 | test 5, 6 (each part by item id)
    seq = [data.seq_items[data.seq_offsets[u] : data.seq_offsets[u + 1]].tolist() for u in range(5)]
    assert seq == [[], [1, 4, 2, 5, 6], [3, 1], [6, 1], []]
    users = torch.arange(5)
    assert data.train_length(users).tolist() == [0, 2, 1, 1, 0]
    assert data.train_interactions().tolist() == [[1, 1], [1, 4], [2, 3], [3, 6]]
    assert data.split_users("val").tolist() == [1, 3]
    assert data.split_users("test").tolist() == [1, 2] == data.eval_users.tolist()
    assert data.stats["num_eval_users"] == 2 and data.stats["num_test_interactions"] == 3


def test_eval_batches_hold_all_split_items_and_mask_training_items_only(tiny_folder: Path) -> None:
    data = preprocess_splits(read_rlmrec(tiny_folder))
    val = EvalData(data, "val", max_len=50)
    batch = val[list(range(len(val)))]
    assert batch.user_ids.tolist() == [1, 3] and batch.candidates is None
    assert batch.targets.tolist() == [[2], [1]]
    assert batch.history.tolist() == [[1, 4], [6, PAD_ID]]
    test = EvalData(data, "test", max_len=50)
    batch = test[list(range(len(test)))]
    assert batch.user_ids.tolist() == [1, 2]
    assert batch.targets.tolist() == [[5, 6], [1, PAD_ID]]
    # At test time the history (the full-ranking mask) is still the training items only: user 1's
    # validation item 2 is not masked (RLMRec/SSLRec quirk).
    assert batch.history.tolist() == [[1, 4], [3, PAD_ID]]
    assert batch.item_seq.tolist() == [[1, 4], [PAD_ID, 3]]


def test_compose_fallback_and_processed_cache(tiny_folder: Path, tmp_path: Path) -> None:
    cfg = compose(["data=rlmrec_tiny", f"data.data_dir={tiny_folder}", f"data.root={tmp_path / 'data'}"])
    assert (cfg.data.name, cfg.data.source) == ("rlmrec_tiny", "rlmrec")
    ensure_processed(cfg.data)
    data = load_processed(cfg.data)
    assert data.split_counts.tolist()[1] == [2, 1, 2] and data.valid_candidates is None


# ------------------------------------------------------------------------------------------------
# Errors


def test_missing_folder_and_missing_data_dir_say_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match=r"nowhere does not exist; expected a folder with trn_mat\.pkl"):
        read_rlmrec(tmp_path / "nowhere")
    cfg = compose(["data=rlmrec_nothing", f"data.root={tmp_path / 'data'}"])
    with pytest.raises(MissingDataError, match=r"has no data\.data_dir.*raw/rlmrec_nothing does not exist.*DATA_DIR"):
        ensure_processed(cfg.data)


def test_missing_file_is_named(tiny_folder: Path) -> None:
    (tiny_folder / "val_mat.pkl").unlink()
    with pytest.raises(MissingDataError, match=r"val_mat\.pkl does not exist; .*pickled scipy\.sparse matrix"):
        read_rlmrec(tiny_folder)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", r"tst_mat\.pkl is not a readable pickle \(EOFError"),
        (b"not a pickle at all", r"tst_mat\.pkl is not a readable pickle"),
        (pickle.dumps({"row": [0]}), r"tst_mat\.pkl holds a dict; expected a 2-D scipy\.sparse matrix"),
        (pickle.dumps(np.zeros((4, 6))), r"tst_mat\.pkl holds a ndarray of shape \(4, 6\); expected a 2-D scipy\.sparse"),
        (pickle.dumps(print), r"tst_mat\.pkl: refusing to unpickle builtins\.print"),
    ],
)
def test_corrupt_or_foreign_pickles_are_named(tiny_folder: Path, content: bytes, message: str) -> None:
    (tiny_folder / "tst_mat.pkl").write_bytes(content)
    with pytest.raises(DataFormatError, match=message):
        read_rlmrec(tiny_folder)


def test_truncated_pickle_is_reported(tiny_folder: Path) -> None:
    path = tiny_folder / "trn_mat.pkl"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataFormatError, match=r"trn_mat\.pkl is not a readable pickle.*truncated or corrupt"):
        read_rlmrec(tiny_folder)


def test_mismatched_shapes_and_overlapping_splits_are_rejected(tmp_path: Path) -> None:
    folder = write_matrices(tmp_path / "a", (4, 6), TINY)
    with open(folder / "val_mat.pkl", "wb") as fh:
        pickle.dump(sp.coo_matrix((4, 7)), fh)
    with pytest.raises(DataFormatError, match=r"same shape.*trn_mat\.pkl \(4, 6\), val_mat\.pkl \(4, 7\)"):
        read_rlmrec(folder)
    overlapping = dict(TINY, test=[(0, 3, 1.0)])
    folder = write_matrices(tmp_path / "b", (4, 6), overlapping)
    with pytest.raises(DataFormatError, match=r"trn_mat\.pkl and .*tst_mat\.pkl share 1 \(user, item\) pairs, e\.g\. user 0 item 3"):
        read_rlmrec(folder)


# ------------------------------------------------------------------------------------------------
# Metrics: hand-computed answers


def test_positions_mask_training_items_and_put_ties_against_targets() -> None:
    # Items 0 (padding) .. 6. Targets 2 and 5; item 1 is a training item (masked).
    scores = torch.tensor([[7.0, 9.0, 0.5, 0.8, 0.1, 0.9, 0.3]])
    targets, history = torch.tensor([[2, 5, PAD_ID]]), torch.tensor([[1]])
    # Ranking 5, 3, 2, 6, 4: target 5 at position 0, target 2 at 2; the padding reads max_k.
    assert multi_target_positions(scores, targets, history, max_k=20).tolist() == [[0, 2, 20]]
    assert multi_target_positions(scores, targets, history, max_k=2).tolist() == [[0, 2, 2]]
    # Without the mask the training item 1 goes first.
    assert multi_target_positions(scores, targets, torch.zeros(1, 0, dtype=torch.long), 20).tolist() == [[1, 3, 20]]
    # All scores equal: the four non-targets count as ahead of both targets (worst order).
    flat = torch.ones(1, 7)
    assert multi_target_positions(flat, targets, torch.zeros(1, 0, dtype=torch.long), 20).tolist() == [[4, 5, 20]]


def test_recall_uses_the_number_of_targets_and_ndcg_ideal_uses_min_k() -> None:
    log2 = math.log2
    # user a: |T| = 2, hits at positions 0 and 2; user b: |T| = 3, hits at 0 and 1; user c: |T| = 1, no hit.
    positions = torch.tensor([[0, 2, 20], [0, 1, 20], [20, 20, 20]])
    num_targets = torch.tensor([2, 3, 1])
    expected = {
        # recall@1: a 1/2, b 1/3 (not 1/min(1, 3) = 1), c 0
        ("recall", 1): (1 / 2 + 1 / 3 + 0) / 3,
        ("recall", 2): (1 / 2 + 2 / 3 + 0) / 3,
        ("recall", 3): (2 / 2 + 2 / 3 + 0) / 3,
        ("ndcg", 1): (1 + 1 + 0) / 3,
        # ndcg@2: b has both top slots filled and IDCG of min(2, 3) = 2 hits, so exactly 1
        ("ndcg", 2): (1 / (1 + 1 / log2(3)) + 1 + 0) / 3,
        ("ndcg", 3): ((1 + 1 / log2(4)) / (1 + 1 / log2(3)) + (1 + 1 / log2(3)) / (1 + 1 / log2(3) + 1 / log2(4)) + 0) / 3,
    }
    for (name, k), value in expected.items():
        metric = MultiTargetRecall(k) if name == "recall" else MultiTargetNDCG(k)
        metric.update(positions, num_targets)
        assert metric.compute().item() == pytest.approx(value, abs=1e-12), (name, k)
        assert metric.total.dtype == torch.float64


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_users_without_targets_are_not_counted_and_empty_is_nan() -> None:
    metric = MultiTargetRecall(5)
    assert math.isnan(metric.compute().item())
    metric.update(torch.tensor([[0], [20]]), torch.tensor([1, 0]))
    assert metric.count.item() == 1 and metric.compute().item() == 1.0


def test_validation_items_are_not_masked_at_test(tiny_folder: Path) -> None:
    data = preprocess_splits(read_rlmrec(tiny_folder))
    batch = EvalData(data, "test", max_len=50)[[0]]  # user 1: train 1, 4; val 2; test 5, 6
    # The validation item 2 scores highest; it stays in the ranking and pushes the test items down.
    scores = torch.tensor([[0.0, 9.0, 8.0, 0.1, 9.5, 7.0, 6.0]])
    positions = multi_target_positions(scores, batch.targets, batch.history, 20)
    assert positions.tolist() == [[1, 2]]
    metrics = multi_target_metrics((1, 5))
    metrics.update(positions, (batch.targets != PAD_ID).sum(1))
    values = {k: v.item() for k, v in metrics.compute().items()}
    assert values["recall@1"] == 0.0 and values["recall@5"] == 1.0
    assert values["ndcg@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))


def test_metric_collection_keeps_metrics_apart_when_their_states_coincide() -> None:
    # After a batch without hits recall@5 and recall@10 have equal states; a compute group would
    # then update only one of them.
    metrics = multi_target_metrics((5, 10))
    metrics.update(torch.tensor([[20]]), torch.tensor([1]))
    metrics.update(torch.tensor([[7]]), torch.tensor([1]))
    values = {k: v.item() for k, v in metrics.compute().items()}
    assert values["recall@5"] == 0.0 and values["recall@10"] == 0.5


# ------------------------------------------------------------------------------------------------
# End to end


@pytest.mark.parametrize("backbone", ["lightgcn", "sasrec"])
def test_cf_pretrain_on_rlmrec_logs_full_ranking_metrics_only(tmp_path: Path, backbone: str) -> None:
    folder = random_folder(tmp_path / "rlmrec_tiny")
    args = [
        "data=rlmrec_tiny",
        f"backbone={backbone}",
        f"data.data_dir={folder}",
        "trainer=cpu",
        "logger=csv",
        f"data.root={tmp_path / 'data'}",
        f"paths.runs={tmp_path / 'runs'}",
        "stage.max_epochs=1",
        "trainer.enable_progress_bar=false",
    ]
    metrics = run(compose(args))
    run_dir = tmp_path / "runs" / "rlmrec_tiny" / "cf_pretrain" / backbone
    written = json.loads((run_dir / "metrics.json").read_text())
    for name in ("recall", "ndcg"):  # a longer list finds at least as many targets
        values = [written[f"test/full/{name}@{k}"] for k in (5, 10, 20)]
        assert None not in values and values == sorted(values), (name, values)
    assert written["test/full/recall@20"] > 0
    assert written["test/full/recall@20"] == pytest.approx(metrics["test/full/recall@20"])
    assert written["best_val/full/ndcg@10"] is not None  # the stage's default monitor exists
    assert written["num_eval_users"] == 60 and written["epochs"] == 1
    assert not [key for key in written if key.startswith("test/") and not key.startswith("test/full/")]
    assert not [key for key in written if "hit@" in key or "mrr" in key]
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val/full/recall@20" in header and not [key for key in header if "hit@" in key or "mrr" in key]


def test_text_stages_on_rlmrec_say_the_data_has_no_titles(tmp_path: Path) -> None:
    folder = random_folder(tmp_path / "rlmrec_tiny")
    base = ["data=rlmrec_tiny", "backbone=sasrec", f"data.data_dir={folder}", "trainer=cpu", "logger=csv",
            f"data.root={tmp_path / 'data'}", f"paths.runs={tmp_path / 'runs'}", "trainer.enable_progress_bar=false"]
    run(compose([*base, "stage.max_epochs=1"]))
    for stage, why in (("align_stage1", "A-LLMRec aligns"), ("face", "FACE aligns")):
        with pytest.raises(ValueError, match=f"data=rlmrec_tiny \\(source rlmrec\\) has no item titles; {why}"):
            run(compose([*base, f"stage={stage}", "text_encoder=hashing" if stage == "align_stage1" else "stage.max_epochs=1"]))


def test_datamodule_reports_the_protocol(tmp_path: Path) -> None:
    folder = random_folder(tmp_path / "r")
    cfg = compose(["data=rlmrec_r", f"data.data_dir={folder}", f"data.root={tmp_path / 'data'}"])
    dm = SeqDataModule(cfg.data, input_kind="user")
    dm.prepare_data()
    dm.setup()
    assert dm.multi_target and not dm.has_candidates
    assert len(dm.train_data) == int(dm.data.split_counts[:, 0].sum())


@pytest.mark.slow
@pytest.mark.ddp
def test_two_process_ddp_multi_target_metrics_match_one_process(tmp_path: Path) -> None:
    from tests.test_ddp import _run

    # 61 test users: uneven shards (31 and 30) over 2 ranks, batches of 32 users.
    folder = random_folder(tmp_path / "rlmrec_ddp", users=61)
    overrides = ("data=rlmrec_ddp", f"data.data_dir={folder}")
    # SASRec: LightGCN's sparse adjacency buffer cannot be broadcast by DDP (a separate limitation).
    single = _run(tmp_path, 1, "sasrec", *overrides)
    double = _run(tmp_path, 2, "sasrec", *overrides)
    assert "test/full/recall@20" in single and not [k for k in single if "hit@" in k]
    # Float64 sums: equal up to the order of addition, far below float32 resolution.
    assert double.keys() == single.keys()
    for key, value in single.items():
        assert double[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
