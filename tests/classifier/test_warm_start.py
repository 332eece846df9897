"""Tests of the warm start (nnunet_plus.classifier.warm_start): the linear description term fitted before epoch 0."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunet_plus.classifier.model import PLUSClassifier, candidate_features
from nnunet_plus.classifier.warm_start import fit_description_term

C = 3  # lesion classes; 3 = not a lesion
CROP, LIVER = (8, 32, 32), (16, 32, 32)


def _patients(n_patients: int, seed: int) -> list[dict]:
    """Patients whose candidates' type is set by the intensity inside the mask (type t: mean 2 t - 2), while
    nnU-Net's prior always favours type 0 (a confidently wrong stage one)."""
    rng = np.random.default_rng(seed)
    items = []
    for p in range(n_patients):
        n = int(rng.integers(0, 4))
        target = rng.integers(0, C, size=n)
        crops = rng.normal(0.0, 0.3, size=(n, 2, *CROP)).astype(np.float32)
        crops[:, 1] = 0.0
        crops[:, 1, 2:6, 8:24, 8:24] = 1.0  # the candidate mask
        for i, t in enumerate(target):
            crops[i, 0][crops[i, 1] > 0] += 2.0 * t - 2.0
        prior = np.tile(np.array([0.7, 0.1, 0.1], np.float32), (n, 1))
        items.append({"case_id": f"case_{p}", "crops": crops, "prior": prior,
                      "features": candidate_features(np.zeros(n), np.full(n, 0.7), np.full(n, 500.0),
                                                     np.zeros(n, dtype=int), C),
                      "target": target.astype(np.int64), "liver": rng.normal(size=(1, *LIVER)).astype(np.float32)})
    return items


def _predict(model: PLUSClassifier, items: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    items = [item for item in items if len(item["target"])]
    counts = [len(item["target"]) for item in items]
    with torch.no_grad():
        logits = model(torch.from_numpy(np.concatenate([i["crops"] for i in items])),
                       torch.from_numpy(np.concatenate([i["prior"] for i in items])),
                       torch.from_numpy(np.concatenate([i["features"] for i in items])),
                       torch.from_numpy(np.stack([i["liver"] for i in items])),
                       torch.repeat_interleave(torch.arange(len(items)), torch.tensor(counts)))
    return logits.argmax(dim=1).numpy(), np.concatenate([i["target"] for i in items])


def test_warm_start_learns_what_the_description_tells_and_nnunet_does_not():
    torch.manual_seed(0)
    model = PLUSClassifier(1, C, preset="tiny").eval()
    train, test = _patients(40, seed=1), _patients(30, seed=2)
    before, truth = _predict(model, test)
    assert (before == 0).all()  # untrained: nnU-Net's answer, type 0 everywhere
    fitted = fit_description_term(model, train)
    after, _ = _predict(model, test)
    assert fitted.candidates == sum(len(i["target"]) for i in train)
    assert fitted.loss_fitted < fitted.loss_prior
    assert (after == truth).mean() > 0.9 > (before == truth).mean()
    assert not torch.equal(model.description_scale, torch.ones_like(model.description_scale))


def test_warm_start_is_deterministic_and_leaves_the_image_branch_alone():
    items = _patients(20, seed=3)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = PLUSClassifier(1, C, preset="tiny")
        untouched = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(("description", "prior"))}
        fit_description_term(model, items)
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in untouched.items())
        states.append(state)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_warm_start_without_candidates_changes_nothing():
    torch.manual_seed(0)
    model = PLUSClassifier(1, C, preset="tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fitted = fit_description_term(model, [item for item in _patients(10, seed=4) if not len(item["target"])])
    assert fitted.candidates == 0 and "no training candidate" in fitted.describe()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_warm_start_refuses_non_finite_descriptions_and_bad_penalty():
    items = [item for item in _patients(10, seed=5) if len(item["target"])]
    items[0]["crops"][0, 0, 0, 0, 0] = np.nan
    model = PLUSClassifier(1, C, preset="tiny")
    with pytest.raises(ValueError, match="non-finite"):
        fit_description_term(model, items)
    with pytest.raises(ValueError, match="l2"):
        fit_description_term(model, items, l2=0.0)
