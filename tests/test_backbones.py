"""Contract tests for every registered backbone (peft's TEST_CASES idea on a small scale)."""

from __future__ import annotations

import pytest
import torch

from backbones import BACKBONES, Backbone, RecBackbone, backbone_config, build_backbone
from backbones.lightgcn import LightGCN
from backbones.ncf import NCF, NCFConfig
from backbones.pop import Pop, PopConfig
from datamodules.batch import SeqBatch
from datamodules.constants import PAD_ID

NUM_ITEMS = 30
NUM_USERS = 10
SEQ_LEN = 12
NUM_CANDIDATES = 7

SEQUENTIAL = [name for name in BACKBONES if BACKBONES[name].input_kind == "sequence"]


def _interactions(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    users = torch.arange(1, NUM_USERS + 1).repeat_interleave(6)
    items = torch.randint(1, NUM_ITEMS + 1, (users.numel(),), generator=gen)
    return torch.stack([users, items], dim=1)


def _build(name: str) -> Backbone:
    torch.manual_seed(0)
    cfg = backbone_config(name)(**backbone_config(name).tiny)
    return build_backbone(cfg, NUM_ITEMS, NUM_USERS, interactions=_interactions())


def _batch(length: int = SEQ_LEN) -> SeqBatch:
    """Six users with 0..SEQ_LEN real items, left-padded to ``length`` columns."""
    gen = torch.Generator().manual_seed(1)
    lengths = [SEQ_LEN, 7, 3, 1, 0, 10]
    seq = torch.full((len(lengths), length), PAD_ID, dtype=torch.long)
    for row, n in enumerate(lengths):
        if n:
            seq[row, -n:] = torch.randint(1, NUM_ITEMS + 1, (n,), generator=gen)
    return SeqBatch(
        user_ids=torch.tensor([1, 2, 3, 4, 5, NUM_USERS]),
        item_seq=seq,
        candidates=torch.randint(1, NUM_ITEMS + 1, (len(lengths), NUM_CANDIDATES), generator=gen),
    )


@pytest.fixture(scope="module", params=list(BACKBONES))
def model(request) -> Backbone:
    return _build(request.param).eval()


def test_registry_keys_match_configs_and_files():
    for name, cls in BACKBONES.items():
        assert cls.config_class().name == name
        assert cls.__module__ == f"backbones.{name}"  # keys equal module file names


def test_shapes(model: Backbone):
    batch = _batch()
    assert isinstance(model, RecBackbone)
    with torch.no_grad():
        user = model.encode_user(batch)
        table = model.item_embeddings()
        picked = model.item_embeddings(batch.candidates)
        scores = model.score(batch, batch.candidates)
        full = model.score_all(batch)
    assert user.shape == (len(batch), model.hidden_dim)
    assert table.shape == (NUM_ITEMS + 1, model.hidden_dim)
    assert picked.shape == (*batch.candidates.shape, model.hidden_dim)
    assert scores.shape == batch.candidates.shape
    assert full.shape == (len(batch), NUM_ITEMS + 1)
    assert torch.isfinite(full).all()


def test_score_matches_score_all(model: Backbone):
    batch = _batch()
    with torch.no_grad():
        scores = model.score(batch, batch.candidates)
        full = model.score_all(batch)
    torch.testing.assert_close(scores, full.gather(1, batch.candidates), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_left_padding_invariance(name: str):
    model = _build(name).eval()
    with torch.no_grad():
        # A non-zero padding row makes any read of padding visible (a zero row and a bias-free GRU
        # would hide it): real positions must never see padding, however much of it there is.
        model.item_embeddings()[PAD_ID].normal_()
        short = model.encode_user(_batch(SEQ_LEN))
        long = model.encode_user(_batch(50))
    torch.testing.assert_close(short, long, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_causality(name: str):
    model = _build(name).eval()
    seq = _batch().item_seq[:1].clone()  # the full-length row
    changed = seq.clone()
    changed[0, 6] = changed[0, 6] % NUM_ITEMS + 1
    with torch.no_grad():
        before, after = model.sequence_output(seq), model.sequence_output(changed)
    torch.testing.assert_close(before[:, :6], after[:, :6], atol=1e-6, rtol=0)
    assert not torch.allclose(before[:, 6:], after[:, 6:])


@pytest.mark.parametrize("name", [n for n in BACKBONES if BACKBONES[n].trainable])
def test_gradients_reach_parameters(name: str):
    model = _build(name).train()
    batch = _batch()
    model.score(batch, batch.candidates).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert sum(float(p.grad.abs().sum()) for p in model.parameters()) > 0


def test_unknown_name():
    with pytest.raises(ValueError, match=r"unknown backbone 'bert4rec'; expected one of \['gru4rec'"):
        backbone_config("bert4rec")
    cfg = NCFConfig()
    cfg.name = "bert4rec"
    with pytest.raises(ValueError, match="unknown backbone 'bert4rec'"):
        build_backbone(cfg, NUM_ITEMS, NUM_USERS)


@pytest.mark.parametrize("name", ["lightgcn", "pop"])
def test_missing_interactions(name: str):
    with pytest.raises(ValueError, match="interactions"):
        build_backbone(backbone_config(name)(), NUM_ITEMS, NUM_USERS)


def test_ncf_needs_num_users():
    with pytest.raises(ValueError, match="num_users"):
        NCF(NCFConfig(), NUM_ITEMS, None)


def test_config_validation_names_the_value():
    with pytest.raises(ValueError, match="must be even, got 15"):
        NCFConfig(mlp_layers=[15, 8])
    with pytest.raises(ValueError, match="0"):
        backbone_config("nextitnet")(dilations=[1, 0])


def test_ncf_score_all_chunks_agree():
    model = _build("ncf").eval()
    batch = _batch()
    with torch.no_grad():
        whole = model.score_all(batch)
        model.score_all_budget = 1  # one item per chunk
        chunked = model.score_all(batch)
    torch.testing.assert_close(whole, chunked, atol=1e-6, rtol=1e-6)


def test_lightgcn_propagates_once_and_caches_in_eval(monkeypatch: pytest.MonkeyPatch):
    model = _build("lightgcn")
    calls = []
    original = model._propagate
    monkeypatch.setattr(model, "_propagate", lambda: calls.append(1) or original())
    batch = _batch()
    model.train()
    model.score(batch, batch.candidates)
    model.score_all(batch)
    assert len(calls) == 2  # training: one propagation per call
    model.eval()
    with torch.no_grad():
        first = model.score_all(batch)
        model.score(batch, batch.candidates)
        model.encode_user(batch)
        model.item_embeddings()
    assert len(calls) == 3  # eval: one propagation, then the cache
    with torch.no_grad():
        model.user_emb.weight.add_(1.0)  # an in-place update must invalidate the cache
        assert not torch.allclose(model.score_all(batch), first)
    assert len(calls) == 4


def test_lightgcn_train_drops_cache():
    model = _build("lightgcn").eval()
    with torch.no_grad():
        model.score_all(_batch())
    assert model._cache is not None
    model.train()
    assert model._cache is None


def test_lightgcn_padding_rows_stay_zero():
    model: LightGCN = _build("lightgcn").eval()
    users, items = model.propagated()
    assert users[PAD_ID].abs().sum() == 0 and items[PAD_ID].abs().sum() == 0


def test_pop_ranks_by_count():
    interactions = torch.tensor([[1, 5], [2, 5], [3, 5], [1, 2], [2, 2], [4, 9], [4, 5]])
    model = Pop(PopConfig(), NUM_ITEMS, NUM_USERS, interactions)
    assert list(model.parameters()) == []
    batch = _batch()
    full = model.score_all(batch)
    assert full.shape == (len(batch), NUM_ITEMS + 1)
    assert full[0, 5] == 4 and full[0, 2] == 2 and full[0, 9] == 1 and full[0, PAD_ID] == 0
    assert full[0].argsort(descending=True)[:3].tolist() == [5, 2, 9]
    # The default dot product of the [B, 1] ones and the [N, 1] counts gives the same scores.
    torch.testing.assert_close(Backbone.score(model, batch, batch.candidates), model.score(batch, batch.candidates))


def test_lightgcn_symmetric_backward_matches_autograd() -> None:
    from backbones.lightgcn import _SymmetricSparseMM, normalized_adjacency

    pairs = torch.tensor([[1, 1], [1, 3], [2, 2], [3, 3], [3, 1]])
    adjacency = normalized_adjacency(pairs, num_users=3, num_items=3)
    x = torch.randn(adjacency.shape[0], 4, requires_grad=True)
    weights = torch.randn(adjacency.shape[0], 4)
    (grad_ref,) = torch.autograd.grad((torch.sparse.mm(adjacency, x) * weights).sum(), x)
    (grad,) = torch.autograd.grad((_SymmetricSparseMM.apply(adjacency, x) * weights).sum(), x)
    assert torch.allclose(grad, grad_ref, atol=1e-6)
