"""Trial plans: the balanced complete design and the active design."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import numpy as np
import pytest

from study.analysis import bradley_terry
from study.design import (
    balanced_plan,
    bt_posterior,
    choose_active_trial,
    expected_order_loss,
    side_balance,
)


@pytest.mark.parametrize("n_methods", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("n_items", [1, 3, 20])
def test_each_pair_once_per_item_and_sides_balanced(n_methods, n_items):
    methods = list(range(100, 100 + n_methods))
    items = list(range(n_items))
    plan = balanced_plan(items, methods, rng=random.Random(n_methods * 31 + n_items))
    base = [t for t in plan if not t.is_repeat]
    seen = Counter((t.item, frozenset((t.left, t.right))) for t in base)
    expected = {(i, frozenset(p)) for i in items for p in itertools.combinations(methods, 2)}
    assert set(seen) == expected
    assert set(seen.values()) == {1}
    balance = side_balance(plan)
    assert all(abs(b) <= 1 for b in balance.values()), balance
    assert set(balance) == set(methods)


def test_repeats_are_about_ten_percent_side_swapped_and_later():
    plan = balanced_plan(list(range(20)), [1, 2, 3, 4, 5], rng=random.Random(7))
    repeats = [(n, t) for n, t in enumerate(plan) if t.is_repeat]
    assert len(repeats) == 20  # 10% of 200
    for position, repeat in repeats:
        original = plan[repeat.repeat_of]
        assert repeat.repeat_of < position
        assert not original.is_repeat
        assert (original.item, original.left, original.right) == (
            repeat.item,
            repeat.right,
            repeat.left,
        )
    assert len({t.repeat_of for _, t in repeats}) == len(repeats)


def test_no_item_twice_in_a_row():
    for seed in range(20):
        plan = balanced_plan(list(range(4)), [1, 2, 3, 4, 5], rng=random.Random(seed))
        assert all(a.item != b.item for a, b in itertools.pairwise(plan)), seed


def test_order_is_random_but_reproducible():
    make = lambda seed: balanced_plan(list(range(6)), [1, 2, 3], rng=random.Random(seed))  # noqa: E731
    assert make(1) == make(1)
    assert make(1) != make(2)


def test_no_repeats_when_fraction_is_zero():
    plan = balanced_plan([1, 2], [1, 2, 3], repeat_fraction=0.0, rng=random.Random(0))
    assert len(plan) == 6 and not any(t.is_repeat for t in plan)


@pytest.mark.parametrize(
    ("items", "methods", "fraction"), [([1], [1], 0.1), ([], [1, 2], 0.1), ([1], [1, 2], 0.9)]
)
def test_bad_design_input_raises(items, methods, fraction):
    with pytest.raises(ValueError):
        balanced_plan(items, methods, repeat_fraction=fraction)


def test_posterior_is_sure_about_lopsided_pairs_and_unsure_about_close_ones():
    # methods 0 and 1 split 10:10, method 2 beat both 20:0
    left = [0] * 20 + [2] * 40
    right = [1] * 20 + [0] * 20 + [1] * 20
    outcome = [1] * 10 + [2] * 10 + [1] * 40
    mean, cov = bt_posterior(3, left, right, outcome)
    assert mean[2] > mean[0] and mean[2] > mean[1]
    loss = expected_order_loss(mean, cov)
    assert loss[0, 1] > 5 * loss[0, 2]
    pick = choose_active_trial(
        mean,
        cov,
        [(9, 0, 1), (9, 0, 2), (9, 1, 2)],
        pair_counts={(0, 1): 20, (0, 2): 20, (1, 2): 20},
        side_counts={},
        rng=random.Random(0),
    )
    assert {pick.left, pick.right} == {0, 1}


def test_active_choice_covers_unseen_pairs_first_and_balances_sides():
    mean, cov = bt_posterior(3, [], [], [])
    candidates = [(0, 0, 1), (0, 0, 2), (0, 1, 2)]
    pick = choose_active_trial(
        mean,
        cov,
        candidates,
        pair_counts={(0, 1): 5, (0, 2): 5},
        side_counts={1: 3, 2: -3},
        rng=random.Random(0),
    )
    assert (pick.left, pick.right) == (2, 1)  # the only unseen pair; 2 was shown right more


TRUTH = np.array([0.0, 0.4, 0.8, 2.5, 4.0])  # two close pairs, the rest easy


def _votes_until_ranked(design: str, seed: int, max_votes: int = 400) -> int:
    """Votes after which the Bradley-Terry order is right and stays right up to max_votes."""
    import pandas as pd

    k, n_raters, items = len(TRUTH), 8, list(range(10))
    rng, coin = random.Random(seed), np.random.default_rng(seed)
    plans = [
        balanced_plan(items, list(range(k)), repeat_fraction=0, rng=random.Random(seed * 97 + r))
        for r in range(n_raters)
    ]
    asked = [set() for _ in range(n_raters)]
    sides = [{} for _ in range(n_raters)]
    last = [None] * n_raters
    left, right, outcome, pair_counts = [], [], [], Counter()
    ranked_since = None
    for v in range(max_votes):
        r = v % n_raters
        if design == "balanced":
            trial = plans[r][v // n_raters]
        else:
            mean, cov = bt_posterior(k, left, right, outcome)
            candidates = [
                (item, i, j)
                for item in items
                for i, j in itertools.combinations(range(k), 2)
                if (item, i, j) not in asked[r]
            ]
            trial = choose_active_trial(
                mean,
                cov,
                candidates,
                pair_counts=pair_counts,
                side_counts=sides[r],
                last_item=last[r],
                rng=rng,
            )
            asked[r].add((trial.item, min(trial.left, trial.right), max(trial.left, trial.right)))
            sides[r][trial.left] = sides[r].get(trial.left, 0) + 1
            sides[r][trial.right] = sides[r].get(trial.right, 0) - 1
            last[r] = trial.item
        p_left = 1 / (1 + np.exp(TRUTH[trial.right] - TRUTH[trial.left]))
        left.append(trial.left)
        right.append(trial.right)
        outcome.append(1 if coin.random() < p_left else 2)
        pair_counts[(min(trial.left, trial.right), max(trial.left, trial.right))] += 1
        if (v + 1) % 10 == 0:
            votes = pd.DataFrame(
                {
                    "rater": "r",
                    "method_left": left,
                    "method_right": right,
                    "choice": ["left" if o == 1 else "right" for o in outcome],
                }
            )
            scores = bradley_terry(votes, list(range(k))).to_numpy()
            ranked = list(np.argsort(scores)) == list(range(k))
            ranked_since = (ranked_since or v + 1) if ranked else None
    return ranked_since or 2 * max_votes


@pytest.mark.slow
def test_active_design_reaches_the_true_ranking_with_fewer_votes():
    seeds = range(20)
    balanced = [_votes_until_ranked("balanced", s) for s in seeds]
    active = [_votes_until_ranked("active", s) for s in seeds]
    print(
        f"votes to the true ranking: balanced {np.mean(balanced):.0f}, active {np.mean(active):.0f}"
    )
    assert np.mean(active) < 0.75 * np.mean(balanced)
    assert np.median(active) < np.median(balanced)
