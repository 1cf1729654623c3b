"""Offline metrics on slates small enough to check by hand, and the bootstrap interval of a ratio."""

from __future__ import annotations

import numpy as np
import pytest

from training import metrics


def test_accuracy_on_a_hand_checked_slate() -> None:
    slates = [np.array([5, 1, 7]), np.array([2, 3, 4])]
    relevant = [{1: 3, 9: 1}, {}]  # the second user has nothing relevant: left out of the means
    result = metrics.accuracy(slates, relevant, 3)
    dcg = 7 / np.log2(3)  # gain 2^3 - 1 at position 2
    idcg = 7 / np.log2(2) + 1 / np.log2(3)
    assert result["ndcg@3"] == pytest.approx(dcg / idcg)
    assert result["recall@3"] == pytest.approx(0.5)
    assert result["precision@3"] == pytest.approx(1 / 3)
    assert result["mrr@3"] == pytest.approx(0.5)
    assert result["hitrate@3"] == 1.0


def test_bootstrap_interval_holds_the_ratio_and_separates_a_real_gap() -> None:
    rng = np.random.default_rng(1)
    base = rng.random(2000)
    better = base * 1.3  # every user 30% better
    ratio, low, high = metrics.paired_bootstrap_ratio(better, base)
    assert ratio == pytest.approx(1.3)
    assert low <= 1.3 <= high and low > 1.0

    noise = rng.random(2000)  # unrelated values of the same distribution: the interval straddles 1
    ratio, low, high = metrics.paired_bootstrap_ratio(noise, base)
    assert low < 1.0 < high


def test_bootstrap_of_an_empty_or_zero_baseline_is_nan() -> None:
    assert np.isnan(metrics.paired_bootstrap_ratio(np.array([]), np.array([]))[0])
    assert np.isnan(metrics.paired_bootstrap_ratio(np.ones(3), np.zeros(3))[0])
