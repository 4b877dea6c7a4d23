"""Composed queries ("like this but in blue"): pure scoring maths.

Plain vector arithmetic (reference image + modifier text) lets the reference's own attribute fight
the modifier: a red dress query vector stays close to every red item. Here each candidate is instead
scored on separate questions, then weighted:

1. structure: is it like the reference once the attribute being changed is ignored? Both image
   vectors are projected off the subspace along which that attribute varies among the catalog's
   images (all the colours, say), so the cosine is left with category, shape and pattern. The same
   is done on the text side when the attribute is a known label set: the reference's description
   (its own, or borrowed from its nearest catalog images when it is an upload) against each
   candidate's.
2. modifier: does its image match the modifier text (cross-modal cosine)?
3. verify: zero-shot, is the requested label the most likely one of its label set?
4. keep: zero-shot, do the other label sets (category, pattern) agree with the reference's?

When the modifier names a label of a known set (the index's tag vocabulary), the score is
``structure + 0.1 * log p(requested label) [+ 0.3 * log p(kept labels agree)]``; otherwise
``z(structure) + z(modifier)``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Attribute:
    """A label set found in the modifier text: its name, labels, label vectors and the label asked for."""

    name: str
    labels: tuple[str, ...]
    vectors: np.ndarray  # (L, d) unit label embeddings
    target: int


@dataclass(frozen=True)
class ComposedWeights:
    structure: float = 1.0
    modifier: float = 1.0  # used when the modifier names no known label
    verify: float = 0.1  # per unit of log-probability of the requested label
    keep: float = 0.3  # per unit of log-probability that a kept attribute agrees with the reference's
    text: float = 1.0  # structure measured on descriptions, added to the image-side structure


def find_attribute(text: str, label_sets: Sequence[tuple[str, tuple[str, ...], np.ndarray]]) -> Attribute | None:
    """The first label set with a label named in ``text`` (whole words; the longest label wins)."""
    low = f" {re.sub(r'[^a-z0-9-]+', ' ', text.lower())} "
    for name, labels, vectors in label_sets:
        found = [i for i, label in enumerate(labels) if f" {label.lower()} " in low]
        if found:
            best = max(found, key=lambda i: len(labels[i]))
            return Attribute(name, labels, vectors, best)
    return None


def project_out(vectors: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Unit vectors of ``vectors`` with the span of ``basis`` rows removed."""
    # SVD rather than QR: centred label means are rank-deficient, and QR would hand back an arbitrary
    # extra direction for the missing rank and project that off too.
    u, sv, _ = np.linalg.svd(np.asarray(basis, dtype=np.float64).T, full_matrices=False)
    q = u[:, sv > sv.max(initial=0.0) * 1e-6]
    v = np.asarray(vectors, dtype=np.float64)
    residual = v - (v @ q) @ q.T
    norms = np.linalg.norm(residual, axis=-1, keepdims=True)
    return residual / np.clip(norms, 1e-12, None)


def label_means(vectors: np.ndarray, labels: list[str], vocabulary: Sequence[str], min_count: int = 5) -> np.ndarray:
    """Mean image vector per label of ``vocabulary`` (NaN rows for labels seen fewer than ``min_count`` times).

    Image vectors sit in another region of the joint space than text vectors (the modality gap), so the
    directions along which an attribute varies among *images* are measured on images: the items' own
    zero-shot tags group them, and the group means span the attribute's subspace.
    """
    out = np.full((len(vocabulary), vectors.shape[1]), np.nan, dtype=np.float64)
    arr = np.asarray(labels)
    for i, label in enumerate(vocabulary):
        mask = arr == label
        if mask.sum() >= min_count:
            out[i] = vectors[mask].mean(axis=0)
    return out


def attribute_basis(attribute: Attribute | None, modifier: np.ndarray, image_means: np.ndarray | None) -> np.ndarray:
    """Directions that encode the attribute being changed: its image-space spread when known, else the
    spread of its label text embeddings, else the modifier itself."""
    if attribute is None:
        return modifier[None, :]
    if image_means is not None:
        present = image_means[~np.isnan(image_means).any(axis=1)]
        if len(present) >= 2:
            return present - present.mean(axis=0, keepdims=True)
    centred = attribute.vectors - attribute.vectors.mean(axis=0, keepdims=True)
    return np.vstack([centred, modifier[None, :]])


def image_space_query(reference: np.ndarray, attribute: Attribute, image_means: np.ndarray) -> np.ndarray | None:
    """The reference moved from its own label's image mean to the requested label's: arithmetic done
    among images rather than across modalities. None when either mean is unknown."""
    current = int(np.argmax(reference @ attribute.vectors.T))
    if current == attribute.target or np.isnan(image_means[[current, attribute.target]]).any():
        return None
    q = reference - image_means[current] + image_means[attribute.target]
    return (q / max(float(np.linalg.norm(q)), 1e-12)).astype(np.float32)


def zscore(x: np.ndarray) -> np.ndarray:
    std = float(x.std())
    return (x - x.mean()) / std if std > 1e-9 else np.zeros_like(x)


def label_distribution(image_vecs: np.ndarray, label_vectors: np.ndarray, scale: float) -> np.ndarray:
    """Zero-shot probabilities (N, L) over one label set."""
    logits = scale * image_vecs @ label_vectors.T
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)


def label_probs(image_vecs: np.ndarray, attribute: Attribute, scale: float) -> np.ndarray:
    """Zero-shot probability of the requested label, per candidate."""
    return label_distribution(image_vecs, attribute.vectors, scale)[:, attribute.target]


def agreement(reference: np.ndarray, candidates: np.ndarray, kept: Sequence[np.ndarray], scale: float) -> np.ndarray:
    """Summed log-probability, over the label sets being kept, that a candidate has the reference's label.

    For one set that is ``log sum_l p_ref(l) p_cand(l)``: soft, so an item the zero-shot classifier is
    unsure about is not thrown out on its first guess.
    """
    total = np.zeros(len(candidates))
    for vectors in kept:
        ref = label_distribution(reference[None, :], vectors, scale)[0]
        total += np.log(np.clip(label_distribution(candidates, vectors, scale) @ ref, 1e-6, 1.0))
    return total


@dataclass(frozen=True)
class TextSide:
    """The reference's CLIP text vector and the candidates' (N, d) stored text vectors.

    A catalog item brings its own description; an uploaded photo borrows the mean description of its
    nearest catalog images (``borrowed``), a noisier stand-in.
    """

    reference: np.ndarray
    candidates: np.ndarray
    borrowed: bool = False


@dataclass(frozen=True)
class ComposedScores:
    score: np.ndarray
    structure: np.ndarray
    modifier: np.ndarray
    verify: np.ndarray | None


def composed_scores(
    reference: np.ndarray,
    candidates: np.ndarray,
    modifier: np.ndarray,
    attribute: Attribute | None,
    weights: ComposedWeights,
    scale: float = 100.0,
    image_means: np.ndarray | None = None,
    kept: Sequence[np.ndarray] = (),
    text: TextSide | None = None,
) -> ComposedScores:
    """Score candidate image vectors (N, d) for reference image + modifier text (see module doc)."""
    basis = attribute_basis(attribute, modifier, image_means)
    ref = project_out(reference[None, :], basis)[0]
    structure = project_out(candidates, basis) @ ref
    if text is not None and attribute is not None:
        # Descriptions name category and pattern outright; the changed attribute's words are projected
        # off them as among images, measured on the label texts since both sides are text here. With
        # no known label set only the modifier's own direction could be removed, leaving the
        # reference's old attribute words to fight the modifier, so descriptions are then left out.
        text_basis = attribute_basis(attribute, modifier, None)
        ref_text = project_out(text.reference[None, :], text_basis)[0]
        structure = structure + weights.text * (project_out(text.candidates, text_basis) @ ref_text)
    mod = candidates @ modifier
    if attribute is None:
        total = weights.structure * zscore(structure) + weights.modifier * zscore(mod)
        return ComposedScores(total, structure, mod, None)
    # With a known label set the modifier is checked zero-shot, which is sharper than the raw cosine:
    # a log-probability penalty keeps items of the requested label on top and orders them by structure.
    verify = label_probs(candidates, attribute, scale)
    total = weights.structure * structure + weights.verify * np.log(np.clip(verify, 1e-6, 1.0))
    if kept and (text is None or text.borrowed):
        # An item's own description already states what is kept; the zero-shot guess would only blur it.
        total = total + weights.keep * agreement(reference, candidates, kept, scale)
    return ComposedScores(total, structure, mod, verify)


def arithmetic_query(reference: np.ndarray, modifier: np.ndarray, attribute: Attribute | None) -> np.ndarray:
    """The baseline: reference + modifier - (the reference's own label of that attribute, if known)."""
    q = reference + modifier
    if attribute is not None:
        current = int(np.argmax(reference @ attribute.vectors.T))
        q = q - attribute.vectors[current]
    return q / max(float(np.linalg.norm(q)), 1e-12)
