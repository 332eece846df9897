"""benchmarks/refit_operating_point.py: refitting the rule on a stored cohort with the code's guards gives the
rule the classifier training stored, and other guard sets are read and refused as documented."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def refit():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import refit_operating_point
        yield refit_operating_point
    finally:
        sys.path.remove(str(BENCHMARKS))


def _cohort(trained_folds, root: Path) -> Path:
    """A bench_efficacy.py seed folder: the trained classifier, and some bank cases as its test bank."""
    seed = root / "seed_1"
    classifier = seed / "nnUNet_results" / trained_folds.dataset / trained_folds.classifier.name
    classifier.parent.mkdir(parents=True)
    classifier.symlink_to(trained_folds.classifier, target_is_directory=True)
    test_bank = seed / "bench_efficacy" / "test_bank"
    test_bank.mkdir(parents=True)
    for bank in sorted((trained_folds.classifier / "candidate_bank").glob("*.npz"))[:4]:
        (test_bank / bank.name).symlink_to(bank)
    return seed


def test_the_refit_with_the_codes_guards_is_the_stored_rule(refit, trained_folds, tmp_path, capsys):
    seed = _cohort(trained_folds, tmp_path)
    from nnunet_plus.classifier.operating_point import GUARDED_SCORES

    rows = refit.compare(refit.load_cohort(seed), {"refit": dict(GUARDED_SCORES)})
    assert set(rows) == {"stored", "refit"} and rows["refit"] == rows["stored"]
    assert refit.main([str(seed), "--guards", "none="]) == 0
    table = capsys.readouterr().out
    assert "| stored |" in table and "| none |" in table


def test_guard_sets_are_parsed_and_unknown_scores_refused(refit, tmp_path, capsys):
    assert refit.parse_guards("fp=false_positives,malignant_f1") == ("fp", {"false_positives": -1,
                                                                             "malignant_f1": 1})
    assert refit.parse_guards("none=") == ("none", {})
    for bad in ("false_positives", "x=recall"):
        with pytest.raises(argparse.ArgumentTypeError):
            refit.parse_guards(bad)
    assert refit.main([str(tmp_path)]) == 1
    assert "not a finished bench_efficacy.py cohort" in capsys.readouterr().err
