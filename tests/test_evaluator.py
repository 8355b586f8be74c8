"""The evaluator's score: micro-F1 as scikit-learn defines it."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from asyncfl.core.task import micro_f1


@pytest.mark.parametrize("seed", range(5))
def test_micro_f1_matches_scikit_learn(seed):
    # Prepare: labels of 10 classes and predictions that are right about 60% of the time
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, 1000)
    pred = np.where(rng.random(1000) < 0.6, y, rng.integers(0, 10, 1000))
    # Execute
    ours = micro_f1(y, pred)
    # Assert
    assert ours == pytest.approx(f1_score(y, pred, average="micro"), abs=1e-12)
    assert 0.55 < ours < 0.7


def test_micro_f1_extremes():
    y = np.arange(10).repeat(3)
    assert micro_f1(y, y) == 1.0
    assert micro_f1(y, (y + 1) % 10) == 0.0
    assert micro_f1(y, np.where(y < 5, y, 0)) == pytest.approx(f1_score(y, np.where(y < 5, y, 0), average="micro"))
