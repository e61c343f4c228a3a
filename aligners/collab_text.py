"""A-LLMRec stage 1: aligning collaborative and text knowledge (Kim et al., KDD 2024, section 4.1).

Two autoencoders map a CF item embedding ``E_i [B, D]`` and a text embedding ``Q_i [B, T]`` into one
latent space ``[B, d']`` (Linear + Sigmoid encoders, Linear decoders, as the official code). Four
terms train them: matching of the two latents, reconstruction of each input, and a recommendation
loss that scores the user against the *reconstructed* item embedding, which keeps the latent
useful for recommendation.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from aligners.losses import matching_loss, recommendation_loss, reconstruction_loss


class MLPAutoencoder(nn.Module):
    """``Linear -> Sigmoid`` encoder to ``latent_dim`` and a ``Linear`` decoder back.

    ``forward(x [B, D]) -> (latent [B, d'], reconstruction [B, D])``.
    """

    def __init__(self, in_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_dim, latent_dim), nn.Sigmoid())
        self.decoder = nn.Linear(latent_dim, in_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        latent = self.encoder(x)
        return latent, self.decoder(latent)


@dataclass
class AlignLosses:
    """The four stage-1 terms and their weighted total."""

    total: Tensor
    rec: Tensor
    matching: Tensor
    item_recon: Tensor
    text_recon: Tensor


class CollabTextAligner(nn.Module):
    """Item (CF) and text autoencoders into a shared latent space.

    - ``item_latent(E [.., D]) -> [.., d']``: the joint collaborative-text item embedding stage 2 uses.
    - ``text_latent(Q [.., T]) -> [.., d']``: the same space reached from text alone (cold items).
    - ``losses(user, pos_item, neg_item, pos_text, neg_text)``: user ``[B, D]``, items ``[B, D]``,
      texts ``[B, T]`` -> :class:`AlignLosses`.
    """

    def __init__(
        self,
        item_dim: int,
        text_dim: int,
        latent_dim: int = 128,
        item_recon_weight: float = 0.5,
        text_recon_weight: float = 0.2,
        rec_score: str = "mean",
    ) -> None:
        super().__init__()
        self.item_ae = MLPAutoencoder(item_dim, latent_dim)
        self.text_ae = MLPAutoencoder(text_dim, latent_dim)
        self.latent_dim = latent_dim
        self.item_recon_weight = item_recon_weight
        self.text_recon_weight = text_recon_weight
        self.rec_score = rec_score

    def item_latent(self, item_emb: Tensor) -> Tensor:
        return self.item_ae.encoder(item_emb)

    def text_latent(self, text_emb: Tensor) -> Tensor:
        return self.text_ae.encoder(text_emb)

    def losses(self, user: Tensor, pos_item: Tensor, neg_item: Tensor, pos_text: Tensor, neg_text: Tensor) -> AlignLosses:
        items = [self.item_ae(pos_item), self.item_ae(neg_item)]
        texts = [self.text_ae(pos_text), self.text_ae(neg_text)]
        rec = recommendation_loss(user, items[0][1], items[1][1], self.rec_score)
        matching = sum(matching_loss(i[0], t[0]) for i, t in zip(items, texts))
        item_recon = sum(reconstruction_loss(i[1], e) for i, e in zip(items, (pos_item, neg_item)))
        # The text target is detached (the official code): the text encoder learns from the
        # matching and from the prediction side of this term only.
        text_recon = sum(reconstruction_loss(t[1], q.detach()) for t, q in zip(texts, (pos_text, neg_text)))
        total = rec + matching + self.item_recon_weight * item_recon + self.text_recon_weight * text_recon
        return AlignLosses(total, rec, matching, item_recon, text_recon)

    def scores(self, user: Tensor, item_emb: Tensor) -> Tensor:
        """Recommendation scores of ``user [B, D]`` for items ``[B, C, D]`` through the item autoencoder -> ``[B, C]``."""
        recon = self.item_ae(item_emb)[1]
        dots = (user.unsqueeze(1) * recon)
        return dots.mean(-1) if self.rec_score == "mean" else dots.sum(-1)
