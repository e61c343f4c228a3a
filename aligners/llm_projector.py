"""A-LLMRec stage 2: projecting CF user and joint item embeddings into an LLM's token space.

``F_U`` maps the CF user representation ``x_u [B, D]`` and ``F_I`` the stage-1 item latent
``e_i [.., d']`` to the LLM's embedding width ``H`` (Linear -> LayerNorm -> LeakyReLU/GELU ->
Linear, xavier-normal weights, as the official code). They are the only trained parameters of
stage 2; the projected vectors replace placeholder tokens of the prompt (:func:`splice`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _projector(in_dim: int, out_dim: int, activation: nn.Module) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim), activation, nn.Linear(out_dim, out_dim))
    for layer in (net[0], net[3]):
        nn.init.xavier_normal_(layer.weight)
    return net


class LLMProjector(nn.Module):
    """``project_user(x [B, D]) -> [B, H]``; ``project_items(e [.., d']) -> [.., H]``."""

    def __init__(self, user_dim: int, item_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.user_proj = _projector(user_dim, llm_dim, nn.LeakyReLU())
        self.item_proj = _projector(item_dim, llm_dim, nn.GELU())

    def project_user(self, user: Tensor) -> Tensor:
        return self.user_proj(user)

    def project_items(self, items: Tensor) -> Tensor:
        return self.item_proj(items)


def splice(embeds: Tensor, input_ids: Tensor, token_id: int, vectors: Tensor, counts: Tensor) -> Tensor:
    """Replace each occurrence of ``token_id`` in row b of ``input_ids [B, L]`` by ``vectors[b, k]``, in order.

    ``embeds [B, L, H]`` are the token embeddings; ``vectors [B, K, H]`` with ``counts [B]`` valid
    rows each. Unlike the official code, a mismatch between placeholders and vectors is an error,
    not a silent truncation. Returns a new tensor (the embedding output is not modified in place).
    """
    hits = input_ids == token_id
    found = hits.sum(1)
    if not torch.equal(found.cpu(), counts.cpu()):
        raise ValueError(f"prompt has {found.tolist()} placeholder tokens {token_id} but {counts.tolist()} vectors were given")
    if not hits.any():
        return embeds
    k = torch.arange(vectors.shape[1], device=counts.device).unsqueeze(0) < counts.unsqueeze(1)
    out = embeds.clone()
    out[hits] = vectors[k].to(embeds.dtype)
    return out
