"""FACE's descriptor mapper (Wang et al., NeurIPS 2025; reference ``face.md`` sections 3.2-3.6, 11).

A CF embedding ``x [N, d]`` is split into ``n`` concept vectors (``n`` affine maps), refined by a
one-layer Transformer encoder, and each concept is quantised to the nearest row of a codebook that
is the frozen LLM input-embedding matrix restricted to common English words, mapped into the
concept space by one trainable linear layer (the SimVQ idea: a frozen basis with a learned map,
which avoids codebook collapse). The ``n`` tokens of one entity are distinct (greedy, slot by
slot, as the official code). A straight-through estimator carries gradients to the encoder; a
decoder reconstructs ``x`` from the quantised concepts.

``forward(x) -> (quantized [N, n, d_w], indices [N, n], vq_loss)``; ``indices`` index the
codebook rows, ``explain(indices)`` turns them into strings.

Deviations from the official code, each to keep entities apart under short training (measured on
Beauty with SASRec: the official initialisation gave every item the same 16 words): the input is
layer-normalised, each concept map is orthogonal on its own and the biases start at zero, and the
codebook map starts from standardised embeddings (see ``_init_codebook_map``). With
``lookup="cosine"`` (the default here; ``"euclidean"`` is the official code's) concepts and mapped
codes are L2-normalised (scaled to norm ``sqrt(d_w)``) before the squared-L2 lookup, as in
ViT-VQGAN's l2-normalised codes (Yu et al., ICLR 2022): under the official lookup a few
small-norm codes become hubs and the codebook loss pulls every entity onto them (measured on
Beauty, 600 items x 16 slots: 28 distinct words after 50 map steps; 5,600 with the cosine lookup).
"""

from __future__ import annotations

import copy
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CODEBOOK_WEIGHT = 0.75  # the official split of the VQ loss: codebook term
COMMITMENT_WEIGHT = 0.25  # and commitment term


PARTS_OF_SPEECH = ("any", "noun_adj")


def is_noun_or_adjective(word: str) -> bool:
    """Whether ``word`` can be a noun or an adjective in lemminflect's English lexicon (offline),
    and is not a verb's -ing or -ed form that is only a noun by conversion ("lobbying",
    "transferring"; "moisturizing" is only a verb form; "interested" stays if it is an adjective)."""
    from lemminflect import getAllLemmas

    forms = getAllLemmas(word)
    if "ADJ" in forms:
        return True
    if "NOUN" not in forms:
        return False
    verb = forms.get("VERB", ())
    return not (word.endswith(("ing", "ed")) and verb and word not in verb)


def word_vocabulary(
    tokenizer, size: int = 20000, language: str = "en", min_length: int = 2, parts_of_speech: str = "any"
) -> tuple[list[int], list[str]]:
    """Token ids and words of the tokenizer's whole-word, lower-case alphabetic tokens that are
    among the ``size`` most frequent words of ``language`` (``wordfreq``) and at least
    ``min_length`` letters long (wordfreq's list has single letters such as "s", "t"), sorted by
    token id. ``parts_of_speech="noun_adj"`` keeps nouns and adjectives only, as the official FACE
    code does (:func:`is_noun_or_adjective`; English only).

    Word-initial tokens: a leading ``Ġ`` (byte-level BPE) or ``▁`` (SentencePiece) marker, or, for
    WordPiece vocabularies, no ``##`` continuation prefix.
    """
    from wordfreq import top_n_list

    if parts_of_speech not in PARTS_OF_SPEECH:
        raise ValueError(f"parts_of_speech must be one of {list(PARTS_OF_SPEECH)}, got {parts_of_speech!r}")
    common = set(top_n_list(language, size))
    if parts_of_speech == "noun_adj":
        common = {w for w in common if is_noun_or_adjective(w)}
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    markers = [m for m in ("Ġ", "▁") if any(p and p.startswith(m) for p in pieces)]
    ids, words = [], []
    for token_id, piece in enumerate(pieces):
        if not piece:
            continue
        if markers:
            if not piece.startswith(markers[0]):
                continue
            word = piece[len(markers[0]) :]
        else:
            if piece.startswith("##"):
                continue
            word = piece
        if len(word) >= min_length and re.fullmatch(r"[a-z]+", word) and word in common:
            ids.append(token_id)
            words.append(word)
    if not ids:
        raise ValueError(f"no token of this tokenizer is one of the {size} most common {language!r} words")
    return ids, words


def greedy_distinct_nearest(distances: Tensor) -> Tensor:
    """Slot-by-slot arg-min over ``distances [N, n, K]`` with no token used twice in a row -> ``[N, n]``.

    Slot ``j`` can lose at most ``j`` tokens to earlier slots, so its pick is among its ``n``
    nearest: the greedy pass runs over those ``[N, n, n]`` candidates only, with the same result
    as a pass over all ``K`` tokens (ties aside).
    """
    n_rows, n_slots, k = distances.shape
    if n_slots > k:
        raise ValueError(f"cannot pick {n_slots} distinct tokens from a codebook of {k}")
    near_dist, near_ids = distances.topk(n_slots, dim=-1, largest=False)  # ascending
    return greedy_distinct(near_ids, near_dist)


def greedy_distinct(near_ids: Tensor, near_dist: Tensor) -> Tensor:
    """The greedy pass of :func:`greedy_distinct_nearest` over each slot's ``n`` nearest tokens
    ``near_ids [N, n, n]``, ascending by ``near_dist``."""
    picks: list[Tensor] = []
    for slot in range(near_ids.shape[1]):
        ids, dist = near_ids[:, slot], near_dist[:, slot]
        if picks:
            taken = (ids.unsqueeze(-1) == torch.stack(picks, dim=1).unsqueeze(1)).any(-1)
            dist = dist.masked_fill(taken, float("inf"))
        picks.append(ids.gather(1, dist.argmin(-1, keepdim=True)).squeeze(1))
    return torch.stack(picks, dim=1)


class VQDescriptorMapper(nn.Module):
    """Disentangled projection + encoder + frozen-token codebook quantiser + decoder.

    - ``codebook``: ``[K, d_tok]`` frozen LLM token embeddings of the word vocabulary (a buffer).
    - ``forward(x [N, d]) -> (quantized [N, n, d_w], indices [N, n], vq_loss)``, quantized carrying
      straight-through gradients to the encoder.
    - ``reconstruct(quantized) -> [N, d]``; ``reconstruction_loss(x)`` for convenience.
    """

    def __init__(
        self,
        in_dim: int,
        codebook: Tensor,
        words: list[str],
        num_words: int = 16,
        word_dim: int = 256,
        dropout: float = 0.1,
        lookup: str = "cosine",
        standardize: bool = False,
        momentum: float = 0.05,
        balance: bool = False,
    ) -> None:
        super().__init__()
        if lookup not in ("cosine", "euclidean"):
            raise ValueError(f"lookup must be 'cosine' or 'euclidean', got {lookup!r}")
        self.lookup = lookup
        if codebook.dim() != 2 or len(words) != codebook.shape[0]:
            raise ValueError(f"codebook must be [K, d_tok] with one word per row, got {tuple(codebook.shape)} and {len(words)} words")
        if num_words > len(words):
            raise ValueError(f"num_words={num_words} exceeds the codebook's {len(words)} words")
        self.num_words, self.word_dim = num_words, word_dim
        self.words = list(words)
        # n affine maps, each (semi-)orthogonal, biases zero. The official code orthogonalises the
        # n maps as one [n, d * d_w] matrix (entries ~ 1 / sqrt(n d d_w)) and draws the biases from
        # randn, so at init every entity's concepts are its bias, and all entities get the same
        # words until a long map phase pulls them apart (reference 12.9). Per-map orthogonal
        # weights make the concepts depend on x from the first step.
        weight = torch.empty(num_words, in_dim, word_dim)
        for k in range(num_words):
            nn.init.orthogonal_(weight[k])
        self.concept_weight = nn.Parameter(weight)
        self.concept_bias = nn.Parameter(torch.zeros(num_words, word_dim))
        layer = nn.TransformerEncoderLayer(word_dim, nhead=1, dropout=dropout, batch_first=True)
        self.encoder = layer
        self.decoder = copy.deepcopy(layer)
        self.out = nn.Linear(num_words * word_dim, in_dim)
        self.register_buffer("codebook", codebook.detach().float().clone(), persistent=False)
        self.codebook_map = nn.Linear(codebook.shape[1], word_dim)
        self._init_codebook_map()
        # Concept standardisation (see ``encode``): running mean and variance of every slot's concept.
        self.standardize, self.momentum = standardize, momentum
        if standardize:
            self.register_buffer("concept_mean", torch.zeros(num_words, word_dim))
            self.register_buffer("concept_var", torch.ones(num_words, word_dim))
        # Per-word penalty on the lookup's similarity (see ``balance``); zero until a word is over-used.
        self.register_buffer("word_bias", torch.zeros(codebook.shape[0]), persistent=balance)

    @torch.no_grad()
    def _init_codebook_map(self) -> None:
        """Start the mapped codebook on the concepts' scale: standardise the frozen embeddings per
        dimension, then rotate them with a random semi-orthogonal map, so mapped codes have about
        unit variance per dimension, like the Transformer's layer-normalised concepts.

        With PyTorch's default init the mapped codes form a small cloud far from every concept
        (norm ~ sqrt(d_w)); the nearest code of any concept is then one of the cloud's few extreme
        points, and all entities get the same words. The map stays an ordinary trainable linear
        layer over the frozen embeddings; only its starting point is chosen.
        """
        mean, std = self.codebook.mean(0), self.codebook.std(0).clamp_min(1e-6)
        rotation = torch.empty(self.word_dim, self.codebook.shape[1])
        nn.init.orthogonal_(rotation)
        if self.word_dim > self.codebook.shape[1]:  # orthonormal columns: rows have norm sqrt(d_tok / d_w)
            rotation *= (self.word_dim / self.codebook.shape[1]) ** 0.5
        weight = rotation / std
        self.codebook_map.weight.copy_(weight)
        self.codebook_map.bias.copy_(-weight @ mean)

    def encode(self, x: Tensor, update: bool = True) -> Tensor:
        """Concept vectors ``[N, n, d_w]`` of ``x [N, d]``.

        With ``standardize``, each slot's concepts are centred and scaled per dimension by running
        statistics (updated from ``x`` in training mode when ``update``; no gradient through them)
        before the lookup. Entities' concepts otherwise share a common direction, and the word
        nearest to it is every entity's word (a hub)."""
        # Layer-normalised input: CF embeddings are small (SASRec's ~0.6 norm), and at their raw scale
        # the Transformer's biases, the same for every entity, would decide the concepts.
        x = F.layer_norm(x, x.shape[-1:])
        concepts = self.encoder(torch.einsum("nd,kdw->nkw", x, self.concept_weight) + self.concept_bias)
        if self.standardize:
            if self.training and update:
                with torch.no_grad():
                    stats = concepts.detach().float()
                    self.concept_mean.lerp_(stats.mean(0), self.momentum)
                    self.concept_var.lerp_(stats.var(0, unbiased=False), self.momentum)
            concepts = (concepts - self.concept_mean) * (self.concept_var + 1e-5).rsqrt()
        return self._on_sphere(concepts)

    def _on_sphere(self, z: Tensor) -> Tensor:
        """``z`` itself (euclidean lookup) or scaled to norm ``sqrt(d_w)`` (cosine lookup)."""
        return F.normalize(z, dim=-1) * self.word_dim**0.5 if self.lookup == "cosine" else z

    def mapped_codebook(self) -> Tensor:
        return self._on_sphere(self.codebook_map(self.codebook))

    @torch.no_grad()
    def search(self, z_e: Tensor, neighbours: int = 0) -> tuple[Tensor, Tensor | None]:
        """Distinct nearest codebook rows ``[N, n]`` of concepts ``z_e [N, n, d_w]`` (squared L2) and,
        with ``neighbours > 0``, each slot's ``neighbours`` nearest rows ``[N, n, neighbours]``."""
        codes = self.mapped_codebook()
        # the penalty in cosine units: concepts and codes have norm sqrt(d_w) (squared L2 = 2 d_w (1 - cos))
        if self.lookup == "cosine":  # concepts and codes share one norm: the nearest have the largest dot product
            distances = -(z_e @ codes.T) + self.word_dim * self.word_bias
        else:
            distances = z_e.pow(2).sum(-1, keepdim=True) - 2 * z_e @ codes.T + codes.pow(2).sum(-1) + 2 * self.word_dim * self.word_bias
        n = self.num_words
        # one top-k serves both: a slot's n nearest (the greedy pass) are the first n of its M nearest
        near_dist, near = distances.topk(min(max(neighbours, n), len(codes)), dim=-1, largest=False)
        return greedy_distinct(near[..., :n], near_dist[..., :n]), (near[..., :neighbours] if neighbours > 0 else None)

    def nearest(self, z_e: Tensor) -> Tensor:
        """Distinct nearest codebook rows ``[N, n]`` of concepts ``z_e [N, n, d_w]`` (squared L2)."""
        return self.search(z_e)[0]

    def quantize(self, z_e: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        """``(quantized, vq_loss)`` of concepts ``z_e`` assigned to codebook rows ``indices``."""
        z_q = self._on_sphere(self.codebook_map(self.codebook[indices]))  # only the chosen rows carry gradients to the map
        loss = CODEBOOK_WEIGHT * F.mse_loss(z_q, z_e.detach()) + COMMITMENT_WEIGHT * F.mse_loss(z_e, z_q.detach())
        return z_e + (z_q - z_e).detach(), loss  # straight-through

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z_e = self.encode(x)
        indices = self.nearest(z_e)
        quantized, loss = self.quantize(z_e, indices)
        return quantized, indices, loss

    def relaxed_logits(self, z_e: Tensor, near: Tensor, temperature: float) -> Tensor:
        """Logits ``[N, n, M]`` of each concept for the rows ``near [N, n, M]``: ``-squared distance /
        (2 d_w temperature)`` with the lookup penalties, which under the cosine lookup is ``cosine /
        temperature`` (plus a constant). Gradients reach the concepts and the codebook map."""
        codes = self.mapped_codebook()
        near_codes = F.embedding(near, codes)  # [N, n, M, d_w]; its backward is 2x faster than indexing's
        dots = (near_codes @ z_e.unsqueeze(-1)).squeeze(-1)
        distances = z_e.pow(2).sum(-1, keepdim=True) - 2 * dots + codes.pow(2).sum(-1)[near] + 2 * self.word_dim * self.word_bias[near]
        return -distances / (2 * self.word_dim * temperature)

    def relaxed(self, z_e: Tensor, near: Tensor, temperature: float) -> Tensor:
        """Soft assignment ``[N, n, M]`` of each concept over its ``M`` nearest rows ``near``: the
        softmax of :meth:`relaxed_logits`."""
        return self.relaxed_logits(z_e, near, temperature).softmax(-1)

    @torch.no_grad()
    def balance(self, indices: Tensor, cap: float, rate: float) -> None:
        """Load balancing without an auxiliary loss (as DeepSeek-V3's expert routing, Wang et al. 2024):
        a word whose share of this step's entities ``indices [N, n]`` exceeds ``cap`` has its lookup
        penalty raised by ``rate`` (in cosine units), every other word's penalty falls by ``rate``
        towards zero. A hub word is then picked only where it beats an entity's next word by its
        penalty. The penalties are saved with the mapper and used at inference as in training."""
        share = torch.zeros_like(self.word_bias).index_add_(0, indices.flatten(), torch.ones(indices.numel(), device=indices.device))
        share /= len(indices)  # words are distinct within an entity: the share of entities using each word
        self.word_bias.add_(torch.where(share > cap, rate, -rate)).clamp_(min=0)

    @torch.no_grad()
    def calibrate(self, z_e: Tensor, cap: float, step: float = 0.02, candidates: int = 128, max_iters: int = 300) -> tuple[int, Tensor]:
        """Set the lookup penalties, from zero, to those that keep every word out of more than ``cap``
        of the entities whose concepts are ``z_e [N, n, d_w]`` (cosine lookup only).

        Each round raises every over-used word's penalty by ``step`` (cosine units) and reads the
        entities' words again, over each concept's ``candidates`` most similar words (a word outside
        them is never nearer than the last of them). Penalties only rise within a calibration, so a
        word over the cap always gives way to the entities' next-nearest words. The penalties that
        :meth:`balance` gathered in training are dropped first: they count every step's users and items,
        and kept as the starting point they suppressed words far below the cap ("hair" in 16 of
        Beauty's 12,101 items; 1,235 titles have it). Returns ``(rounds, picks [N, n])``."""
        if self.lookup != "cosine":
            raise ValueError("calibrating the word penalties needs stage.lookup=cosine")
        self.word_bias.zero_()
        n = self.num_words
        codes = self.mapped_codebook()
        flat = z_e.reshape(-1, z_e.shape[-1])
        parts = [(flat[b : b + 4096] @ codes.T / self.word_dim).topk(min(candidates, len(codes)), dim=-1) for b in range(0, len(flat), 4096)]
        sims = torch.cat([p.values for p in parts]).view(*z_e.shape[:2], -1)
        ids = torch.cat([p.indices for p in parts]).view(*z_e.shape[:2], -1)
        for rounds in range(max_iters + 1):
            best, pos = (sims - self.word_bias[ids]).topk(n, dim=-1)
            picks = greedy_distinct(ids.gather(-1, pos), -best)
            share = torch.bincount(picks.flatten(), minlength=len(codes)).float() / len(picks)
            over = share > cap
            if not over.any() or rounds == max_iters:
                break
            self.word_bias[over] += step
        return rounds, picks

    def reconstruct(self, quantized: Tensor) -> Tensor:
        return self.out(self.decoder(quantized).flatten(1))

    def explain(self, indices: Tensor) -> list[list[str]]:
        """The words of ``indices [N, n]``, in slot order."""
        return [[self.words[i] for i in row] for row in indices.tolist()]
