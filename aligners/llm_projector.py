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
    """``project_user(x [B, D]) -> [B, H]``; ``project_items(e [.., d']) -> [.., H]``.

    Two options put the vectors where the LLM's own tokens are (issue 14; both off = the paper):

    - ``standardize``: inputs are standardised per feature with statistics fixed once by
      :meth:`fit_input_stats` (training users' CF vectors, all items' latents), so the first
      layer sees unit-scale features whatever the backbone's scale.
    - ``token_norm > 0``: every output vector is rescaled to that norm (the mean norm of the LLM's
      input-embedding rows, measured from the loaded model), keeping only its learnt direction.
      Untrained projectors otherwise start about 5x larger than SmolLM2's tokens, and two random
      items' vectors already have cosine 0.7.

    The statistics and the norm are buffers of the state dict, saved with the projectors.
    """

    def __init__(self, user_dim: int, item_dim: int, llm_dim: int, standardize: bool = False, token_norm: float = 0.0) -> None:
        super().__init__()
        self.user_proj = _projector(user_dim, llm_dim, nn.LeakyReLU())
        self.item_proj = _projector(item_dim, llm_dim, nn.GELU())
        self.standardize = standardize
        for name, dim in (("user", user_dim), ("item", item_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))
        self.register_buffer("token_norm", torch.tensor(float(token_norm)))
        # A Python flag read per call (reading the buffer would sync a GPU on every projection), kept in
        # step with the buffer when a saved state is loaded.
        self.rescale = token_norm > 0
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "rescale", float(module.token_norm) > 0))

    @torch.no_grad()
    def fit_input_stats(self, users: Tensor, items: Tensor) -> None:
        """Per-feature mean and standard deviation of ``users [N, D]`` and ``items [M, d']``."""
        for name, x in (("user", users), ("item", items)):
            getattr(self, f"{name}_mean").copy_(x.float().mean(0))
            getattr(self, f"{name}_std").copy_(x.float().std(0).clamp(min=1e-6))

    def _out(self, x: Tensor) -> Tensor:
        if not self.rescale:
            return x
        return x * (self.token_norm / x.norm(dim=-1, keepdim=True).clamp(min=1e-6))

    def project_user(self, user: Tensor) -> Tensor:
        if self.standardize:
            user = (user - self.user_mean) / self.user_std
        return self._out(self.user_proj(user))

    def project_items(self, items: Tensor) -> Tensor:
        if self.standardize:
            items = (items - self.item_mean) / self.item_std
        return self._out(self.item_proj(items))


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
