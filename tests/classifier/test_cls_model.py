"""Tests of the PLUS network (PLUSClassifier): shapes, fusion modes, training step, config, determinism."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from nnunet_plus.classifier.fusion import FUSION_MODES
from nnunet_plus.classifier.loss import DEFAULT_DISTILL_WEIGHT, plus_loss
from nnunet_plus.classifier.model import PLUSClassifier, candidate_features, prior_distribution

C = 4  # lesion classes: 0, 1 malignant; 2, 3 benign; 4 = not a lesion
CLASSES = {"malignant_classes": [0, 1], "benign_classes": [2, 3]}
CROP, LIVER = (8, 32, 32), (16, 32, 32)


def _batch(lesions_per_patient: list[int], *, in_channels: int = 1, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    n, b = sum(lesions_per_patient), len(lesions_per_patient)
    crops = torch.randn(n, in_channels + 1, *CROP, generator=g)
    crops[:, -1] = (crops[:, -1] > 0).float()  # mask channel
    targets = torch.randint(0, C + 1, (n,), generator=g)
    index = torch.repeat_interleave(torch.arange(b), torch.tensor(lesions_per_patient, dtype=torch.long))
    malignant = torch.zeros(b)
    tumor = torch.zeros(b)
    for i, j in zip(targets.tolist(), index.tolist()):
        malignant[j] = max(malignant[j], float(i in (0, 1)))
        tumor[j] = max(tumor[j], float(i < C))
    features = torch.from_numpy(candidate_features(torch.randint(0, 2, (n,), generator=g).numpy(),
                                                   torch.rand(n, generator=g).numpy(),
                                                   100 * torch.rand(n, generator=g).numpy(),
                                                   torch.randint(0, C, (n,), generator=g).numpy(), C))
    return {"lesion_crops": crops, "priors": torch.softmax(torch.randn(n, C + 1, generator=g), dim=1)[:, :C],
            "features": features,
            "liver": torch.randn(b, in_channels, *LIVER, generator=g), "lesion_to_patient": index,
            "targets": targets, "patient_malignant": malignant, "patient_tumor": tumor}


def _forward(model: PLUSClassifier, batch: dict) -> torch.Tensor:
    return model(batch["lesion_crops"], batch["priors"], batch["features"], batch["liver"],
                 batch["lesion_to_patient"])


def _loss(model: PLUSClassifier, batch: dict, logits: torch.Tensor) -> dict:
    extra = {}
    if model.needs_prior_target:
        extra = {"distill_targets": prior_distribution(batch["priors"]), "distill_weight": DEFAULT_DISTILL_WEIGHT}
    return plus_loss(logits, batch["targets"], batch["lesion_to_patient"], batch["patient_malignant"],
                     batch["patient_tumor"], num_patients=len(batch["liver"]), **CLASSES, **extra)


def _trained_looking(model: PLUSClassifier) -> PLUSClassifier:
    """``model`` with a random (non-zero) correction head, as after training."""
    torch.nn.init.normal_(model.head[-1].weight, std=0.5)
    torch.nn.init.normal_(model.head[-1].bias, std=0.5)
    return model


def test_prior_distribution_by_hand():
    priors = torch.tensor([[0.2, 0.3], [0.6, 0.6], [0.0, 0.0], [-0.1, 0.5]])
    expected = torch.tensor([[0.2, 0.3, 0.5], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.0, 0.5, 0.5]])
    torch.testing.assert_close(prior_distribution(priors), expected)
    with pytest.raises(ValueError):
        prior_distribution(torch.rand(3))


@pytest.mark.parametrize("fusion", FUSION_MODES)
@pytest.mark.parametrize("lesions_per_patient", [[0], [0, 0], [1], [3], [2, 0, 3], [0, 1, 0, 1]])
def test_shapes(fusion, lesions_per_patient):
    torch.manual_seed(0)
    model = PLUSClassifier(1, C, fusion=fusion)
    batch = _batch(lesions_per_patient)
    logits = _forward(model, batch)
    assert logits.shape == (sum(lesions_per_patient), C + 1)
    assert torch.isfinite(logits).all()


def test_no_candidates_still_backprops():
    model = PLUSClassifier(1, C)
    batch = _batch([0, 0])
    logits = _forward(model, batch)
    assert logits.shape == (0, C + 1)
    out = _loss(model, batch, logits)
    out["total"].backward()  # constant patient terms; the graph exists, gradients are zero
    assert model.head[1].weight.grad is not None and torch.all(model.head[1].weight.grad == 0)


def test_multi_channel_input():
    model = PLUSClassifier(3, C, hda_scales=2, num_heads=2)
    assert _forward(model, _batch([2, 1], in_channels=3)).shape == (3, C + 1)


@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_one_training_step(fusion):
    """Two steps: the first moves only the zero-initialised head (no gradient reaches the encoders through a zero
    layer yet), the second every parameter."""
    torch.manual_seed(0)
    model = PLUSClassifier(1, C, fusion=fusion)
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    batch = _batch([2, 0, 3])
    for _ in range(2):
        out = _loss(model, batch, _forward(model, batch))
        assert all(torch.isfinite(v) for v in out.values())
        if fusion == "distill":
            assert out["distill"] > 0
        optimizer.zero_grad()
        out["total"].backward()
        optimizer.step()
    after = model.state_dict()
    unchanged = [name for name, _ in model.named_parameters() if torch.equal(before[name], after[name])]
    assert unchanged == []


@pytest.mark.parametrize("fusion, uses_prior", [("gpr", True), ("gated", True), ("weighted", True),
                                                ("none", False), ("distill", False)])
def test_prior_reaches_the_logits_only_in_fusing_modes(fusion, uses_prior):
    """The prior is always the base of the logits; it reaches the learned correction only through fusion."""
    from nnunet_plus.classifier.model import PRIOR_SMOOTHING

    torch.manual_seed(0)
    model = _trained_looking(PLUSClassifier(1, C, fusion=fusion)).eval()
    batch = _batch([2, 1])
    other = dict(batch, priors=torch.eye(C)[[0, 1, 2]])

    def correction(inputs):
        smoothed = (1 - PRIOR_SMOOTHING) * prior_distribution(inputs["priors"]) + PRIOR_SMOOTHING / (C + 1)
        return _forward(model, inputs) - smoothed.log()

    with torch.no_grad():
        changed = not torch.allclose(correction(batch), correction(other), atol=1e-5)
    assert changed == uses_prior
    assert model.needs_prior_target == (fusion == "distill")


def test_gpr_learns_to_use_an_informative_prior():
    # identical crops and livers: only the prior tells the 5 candidates apart (target = the prior's class)
    torch.manual_seed(0)
    model = PLUSClassifier(1, C, fusion="gpr")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = _batch([C + 1])
    batch["lesion_crops"][:] = batch["lesion_crops"][0]
    batch["targets"] = torch.arange(C + 1)
    batch["priors"] = 0.9 * torch.eye(C + 1)[:, :C]  # the last one: 0.9 "not a lesion"
    batch["patient_malignant"][:] = 1
    batch["patient_tumor"][:] = 1
    for _ in range(15):
        loss = _loss(model, batch, _forward(model, batch))["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert _forward(model.eval(), batch).argmax(dim=1).tolist() == list(range(C + 1))


@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_untrained_network_returns_the_smoothed_prior(fusion):
    """The guard: the correction head starts at zero, so the output is nnU-Net's prior (same ranking)."""
    from nnunet_plus.classifier.model import PRIOR_SMOOTHING

    torch.manual_seed(0)
    model = PLUSClassifier(1, C, fusion=fusion).eval()
    batch = _batch([2, 0, 3])
    with torch.no_grad():
        probabilities = torch.softmax(_forward(model, batch), dim=1)
    prior = prior_distribution(batch["priors"])
    torch.testing.assert_close(probabilities, (1 - PRIOR_SMOOTHING) * prior + PRIOR_SMOOTHING / (C + 1))
    assert probabilities.argmax(dim=1).tolist() == prior.argmax(dim=1).tolist()
    with torch.no_grad():
        moved = torch.softmax(_forward(_trained_looking(model), batch), dim=1)
    assert not torch.allclose(moved, probabilities)  # the head does change the answer once trained


def test_lesions_are_classified_independently():
    torch.manual_seed(0)
    model = _trained_looking(PLUSClassifier(1, C)).eval()
    batch = _batch([2, 0, 3])
    with torch.no_grad():
        together = _forward(model, batch)
        for patient, rows in ((0, [0, 1]), (2, [2, 3, 4])):
            alone = model(batch["lesion_crops"][rows], batch["priors"][rows], batch["features"][rows],
                          batch["liver"][patient:patient + 1], torch.zeros(len(rows), dtype=torch.long))
            torch.testing.assert_close(alone, together[rows], atol=1e-5, rtol=1e-5)


def test_config_round_trip():
    torch.manual_seed(0)
    model = PLUSClassifier(2, C, fusion="gated", hda_scales=3, num_heads=2, widths=(4, 8, 16, 32),
                           blocks_per_stage=(1, 2, 1, 1)).eval()
    config = json.loads(json.dumps(model.to_config()))
    assert config["widths"] == [4, 8, 16, 32] and config["fusion"] == "gated" and config["preset"] == "tiny"
    rebuilt = PLUSClassifier.from_config(config).eval()
    rebuilt.load_state_dict(model.state_dict())
    batch = _batch([1, 2], in_channels=2)
    with torch.no_grad():
        torch.testing.assert_close(_forward(rebuilt, batch), _forward(model, batch))
    with pytest.raises(ValueError, match="unknown"):
        PLUSClassifier.from_config({**config, "depth": 3})
    with pytest.raises(ValueError, match="missing"):
        PLUSClassifier.from_config({"num_lesion_classes": C})


def test_paper_preset_is_two_resnet18():
    model = PLUSClassifier(1, 9, preset="paper")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert model.dim == 512 and model.num_classes == 10
    assert 33.0e6 < count(model.lesion_encoder) < 33.3e6 and 33.0e6 < count(model.liver_encoder) < 33.3e6


def test_seeded_training_is_deterministic():
    def run() -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(123)
        model = PLUSClassifier(1, C, dropout=0.1)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        batch = _batch([2, 1], seed=5)
        loss = _loss(model, batch, _forward(model, batch))["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.detach(), _forward(model.eval(), batch).detach()

    (loss_a, logits_a), (loss_b, logits_b) = run(), run()
    assert torch.equal(loss_a, loss_b) and torch.equal(logits_a, logits_b)


@pytest.mark.parametrize("change, match", [
    ({"lesion_crops": torch.zeros(3, 1, *CROP)}, "lesion_crops"),
    ({"priors": torch.zeros(3, C + 1)}, "priors"),
    ({"liver": torch.zeros(2, 2, *LIVER)}, "liver"),
    ({"lesion_to_patient": torch.tensor([0, 0, 2])}, r"\[0, 2\)"),
    ({"lesion_to_patient": torch.tensor([0, 0, 1], dtype=torch.int32)}, "long"),
])
def test_bad_inputs(change, match):
    model = PLUSClassifier(1, C)
    batch = {**_batch([2, 1]), **change}
    with pytest.raises(ValueError, match=match):
        _forward(model, batch)


@pytest.mark.parametrize("kwargs", [{"fusion": "concat"}, {"preset": "huge"}, {"hda_scales": 0}])
def test_bad_construction(kwargs):
    with pytest.raises(ValueError):
        PLUSClassifier(1, C, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_amp_training_step():
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = PLUSClassifier(1, C).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda")
    batch = {k: v.to(device) for k, v in _batch([2, 0, 3]).items()}
    with torch.autocast("cuda", dtype=torch.float16):
        logits = _forward(model, batch)
        out = _loss(model, batch, logits)
    assert logits.dtype == torch.float16 and out["total"].dtype == torch.float32
    scaler.scale(out["total"]).backward()
    scaler.step(optimizer)
    scaler.update()
    assert torch.isfinite(out["total"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_parameter_groups_cover_every_parameter_once():
    model = PLUSClassifier(1, C)
    slow, fast = model.parameter_groups(1e-3, correction_factor=10.0)
    ids = [id(p) for p in slow["params"]] + [id(p) for p in fast["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(set(ids)) == len(ids)
    assert (slow["lr"], fast["lr"]) == (1e-3, pytest.approx(1e-2))
    fast_ids = {id(p) for p in fast["params"]}
    assert id(model.head[-1].weight) in fast_ids and id(model.candidate_encoder[0].weight) in fast_ids
    # fitted by the warm start: they learn at the base rate
    assert id(model.prior_scale) not in fast_ids and id(model.description_head.weight) not in fast_ids


def test_liver_statistics_read_the_liver_voxels_only():
    """Mean / spread per channel over the liver voxels (above the fill minimum); zeros without liver."""
    from nnunet_plus.classifier.model import liver_statistics

    liver = torch.full((2, 2, 4, 4, 4), -3.0)
    liver[0, 0, 1:3, 1:3, 1:3] = torch.tensor([1.0, 3.0]).repeat(4)[:, None, None].reshape(2, 2, 2)
    liver[0, 1, 1:3, 1:3, 1:3] = 7.0
    stats = liver_statistics(liver)
    assert stats.shape == (2, 4)
    torch.testing.assert_close(stats[0], torch.tensor([2.0, 7.0, 1.0, 0.0]))
    torch.testing.assert_close(stats[1], torch.zeros(4))
