"""Warm start of the PLUS network: fit its linear description term before the first epoch (linear probing, then
fine-tuning; Kumar et al., ICLR 2022).

A demo or a small cohort affords the network a few epochs of ~100 optimiser steps; in that time the image
branch barely moves away from nnU-Net's answer, while the numbers that describe a candidate (its size, its
intensity inside and around the mask, nnU-Net's tier and class, its patient's liver) already separate many
types (benchmarks/RESULTS.md: a linear model on them, fitted out of fold, beats nnU-Net alone on every stored
cohort). So before the epochs the trainer fits, on the training candidates, the convex problem

    minimise  sum_i CE((1 + s) log P_i + W z_i + b, y_i) + (l2 / 2) (||W||^2 + s^2)

where ``z_i`` is the standardised description of candidate ``i`` (:meth:`PLUSClassifier.description`), ``P_i``
nnU-Net's smoothed prior and ``y_i`` the candidate's target (a lesion type or "not a lesion"): a multinomial
logistic regression with the log prior as offset, solved by L-BFGS to convergence. The solution becomes the
network's ``description_head`` and ``prior_scale``; the standardisation (mean and spread of the training
descriptions) its ``description_mean`` / ``description_scale`` buffers. The epochs then train the image branch
on top (and may adjust the linear term). No augmentation, no randomness: the result depends only on the
training candidates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import torch
from torch.nn import functional as F

from nnunet_plus.classifier.model import PLUSClassifier, prior_distribution

__all__ = ["DEFAULT_L2", "WarmStart", "fit_description_term"]

#: L2 penalty of the warm start (on standardised inputs, summed loss: scikit-learn's LogisticRegression C = 1)
DEFAULT_L2 = 1.0
#: spreads below this count as constant columns (scale 1: the column stays 0 after centring)
MIN_SCALE = 1e-6


@dataclass(frozen=True)
class WarmStart:
    """What :func:`fit_description_term` did: candidates used, mean cross-entropy per candidate with nnU-Net's
    prior alone and after the fit, the fitted prior scale ``1 + s``."""

    candidates: int
    loss_prior: float
    loss_fitted: float
    prior_weight: float

    def describe(self) -> str:
        if not self.candidates:
            return "warm start: no training candidate; the description term stays zero"
        return (f"warm start: linear description term fitted on {self.candidates} training candidates (cross-entropy "
                f"per candidate {self.loss_prior:.3f} with nnU-Net's prior alone -> {self.loss_fitted:.3f}; "
                f"weight of nnU-Net's log prior {self.prior_weight:.2f})")


@torch.no_grad()
def _training_table(model: PLUSClassifier, patients: Iterable[Mapping]) -> tuple[torch.Tensor, ...]:
    """``(descriptions (N, D), log priors (N, C + 1), targets (N,))`` in float64 over every candidate of
    ``patients`` (items of :class:`~nnunet_plus.classifier.data.CandidateDataset`, one at a time)."""
    descriptions, log_priors, targets = [], [], []
    for item in patients:
        n = int(item["target"].shape[0])
        if n == 0:
            continue
        crops = torch.from_numpy(np.asarray(item["crops"], dtype=np.float32))
        liver = torch.from_numpy(np.asarray(item["liver"], dtype=np.float32))[None]
        features = torch.from_numpy(np.asarray(item["features"], dtype=np.float32))
        descriptions.append(model.description(crops, features, liver, torch.zeros(n, dtype=torch.long)))
        prior = prior_distribution(torch.from_numpy(np.asarray(item["prior"], dtype=np.float32)))
        log_priors.append(model.log_prior(prior))
        targets.append(torch.from_numpy(np.asarray(item["target"], dtype=np.int64)))
    if not targets:
        return (torch.zeros(0, model.description_dim), torch.zeros(0, model.num_classes),
                torch.zeros(0, dtype=torch.long))
    return torch.cat(descriptions).double(), torch.cat(log_priors).double(), torch.cat(targets)


def fit_description_term(model: PLUSClassifier, patients: Iterable[Mapping], *, l2: float = DEFAULT_L2,
                         max_iter: int = 500) -> WarmStart:
    """Fit ``model``'s description standardisation, ``description_head`` and ``prior_scale`` on the candidates of
    ``patients`` (un-augmented :class:`~nnunet_plus.classifier.data.CandidateDataset` items), in place.

    Without candidates nothing changes. Non-finite descriptions (which the bank never holds) raise ValueError.
    """
    if not l2 > 0:
        raise ValueError(f"l2 must be > 0, got {l2}")
    x, offset, y = _training_table(model, patients)
    if y.numel() == 0:
        return WarmStart(0, float("nan"), float("nan"), 1.0 + float(model.prior_scale))
    if not torch.isfinite(x).all():
        raise ValueError("non-finite numbers in the training candidates' descriptions (a corrupt candidate bank?)")
    mean = x.mean(dim=0)
    scale = x.std(dim=0, unbiased=False)
    scale = torch.where(scale > MIN_SCALE, scale, torch.ones_like(scale))
    z = (x - mean) / scale
    weight = torch.zeros(model.num_classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(model.num_classes, dtype=torch.float64, requires_grad=True)
    s = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias, s], max_iter=max_iter, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        logits = (1.0 + s) * offset + z @ weight.T + bias
        loss = F.cross_entropy(logits, y, reduction="sum") + 0.5 * l2 * ((weight ** 2).sum() + s ** 2)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    with torch.no_grad():
        loss_prior = float(F.cross_entropy(offset, y))
        loss_fitted = float(F.cross_entropy((1.0 + s) * offset + z @ weight.T + bias, y))
        dtype = model.description_head.weight.dtype
        model.description_mean.copy_(mean.to(model.description_mean))
        model.description_scale.copy_(scale.to(model.description_scale))
        model.description_head.weight.copy_(weight.to(dtype))
        model.description_head.bias.copy_(bias.to(dtype))
        model.prior_scale.copy_(s.to(model.prior_scale.dtype))
    return WarmStart(int(y.numel()), loss_prior, loss_fitted, 1.0 + float(s.detach()))
