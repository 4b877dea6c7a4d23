"""Composed queries ("like this but in blue"): pure scoring maths.

Plain vector arithmetic (reference image + modifier text) lets the reference's own attribute fight
the modifier: a red dress query vector stays close to every red item. Here each candidate is instead
scored on three separate questions, each z-scored over the candidate pool and then weighted:

1. structure: is it like the reference once the attribute being changed is ignored? Both image
   vectors are projected off the subspace along which that attribute varies among the catalog's
   images (all the colours, say), so the cosine is left with category, shape and pattern.
2. modifier: does its image match the modifier text (cross-modal cosine)?
3. verify: zero-shot, is the requested label the most likely one of its label set?

When the modifier names a label of a known set (the index's tag vocabulary), the score is
``structure + 0.1 * log p(requested label)``; otherwise ``z(structure) + z(modifier)``.
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
    q, _ = np.linalg.qr(np.asarray(basis, dtype=np.float64).T)
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


def label_probs(image_vecs: np.ndarray, attribute: Attribute, scale: float) -> np.ndarray:
    """Zero-shot probability of the requested label, per candidate."""
    logits = scale * image_vecs @ attribute.vectors.T
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return probs[:, attribute.target]


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
) -> ComposedScores:
    """Score candidate image vectors (N, d) for reference image + modifier text (see module doc)."""
    basis = attribute_basis(attribute, modifier, image_means)
    ref = project_out(reference[None, :], basis)[0]
    structure = project_out(candidates, basis) @ ref
    mod = candidates @ modifier
    if attribute is None:
        total = weights.structure * zscore(structure) + weights.modifier * zscore(mod)
        return ComposedScores(total, structure, mod, None)
    # With a known label set the modifier is checked zero-shot, which is sharper than the raw cosine:
    # a log-probability penalty keeps items of the requested label on top and orders them by structure.
    verify = label_probs(candidates, attribute, scale)
    total = weights.structure * structure + weights.verify * np.log(np.clip(verify, 1e-6, 1.0))
    return ComposedScores(total, structure, mod, verify)


def arithmetic_query(reference: np.ndarray, modifier: np.ndarray, attribute: Attribute | None) -> np.ndarray:
    """The baseline: reference + modifier - (the reference's own label of that attribute, if known)."""
    q = reference + modifier
    if attribute is not None:
        current = int(np.argmax(reference @ attribute.vectors.T))
        q = q - attribute.vectors[current]
    return q / max(float(np.linalg.norm(q)), 1e-12)
