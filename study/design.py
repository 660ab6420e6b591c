"""Trial plans: a complete balanced design per rater, and an active (adaptive) choice.

Pure functions over item and method ids; :mod:`study.trials` stores what they plan.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import evalica
import numpy as np
import pandas as pd
from scipy.special import ndtr

DESIGNS = ("balanced", "active")

# Weight of one virtual tie between every pair of methods: keeps Bradley-Terry scores finite
# when a method never wins, and is negligible once real votes arrive.
PRIOR_TIE_WEIGHT = 0.1


@dataclass(frozen=True)
class PlannedTrial:
    """One comparison in a rater's plan: ``left`` is the method shown on the left."""

    item: int
    left: int
    right: int
    is_repeat: bool = False
    repeat_of: int | None = None  # index in the plan of the trial this one repeats


def balanced_plan(
    items: Sequence[int],
    methods: Sequence[int],
    *,
    repeat_fraction: float = 0.1,
    rng: random.Random | None = None,
) -> list[PlannedTrial]:
    """Every item x every method pair once, sides balanced per method, plus side-swapped repeats.

    Order is random but the same item never appears twice in a row (when there are at least
    two items); each repeat comes after the trial it repeats.
    """
    if len(set(methods)) < 2:
        raise ValueError(f"a design needs at least two distinct methods; got {list(methods)}.")
    if not items:
        raise ValueError("a design needs at least one item.")
    if not 0.0 <= repeat_fraction <= 0.5:
        raise ValueError(f"repeat_fraction must be in [0, 0.5]; got {repeat_fraction}.")
    rng = rng or random.Random()
    pairs = list(itertools.combinations(methods, 2))
    comparisons = [(item, a, b) for item in items for a, b in pairs]
    repeated = set(rng.sample(range(len(comparisons)), round(repeat_fraction * len(comparisons))))
    # A repeated comparison and its swapped repeat show each side once: they balance
    # themselves, so only the others need orienting.
    single = [n for n in range(len(comparisons)) if n not in repeated]
    sides = _balanced_sides([comparisons[n][1:] for n in single], rng)
    left_first = dict(zip(single, sides, strict=True))
    left_first.update({n: rng.random() < 0.5 for n in repeated})
    base = [
        PlannedTrial(item, a, b) if left_first[n] else PlannedTrial(item, b, a)
        for n, (item, a, b) in enumerate(comparisons)
    ]
    repeats = [
        PlannedTrial(base[n].item, base[n].right, base[n].left, True, n) for n in sorted(repeated)
    ]
    return _spread(base + repeats, rng)


def side_balance(plan: Sequence[PlannedTrial]) -> dict[int, int]:
    """Per method, times shown left minus times shown right."""
    balance: Counter[int] = Counter()
    for trial in plan:
        balance[trial.left] += 1
        balance[trial.right] -= 1
    return dict(balance)


def _balanced_sides(edges: list[tuple[int, int]], rng: random.Random) -> list[bool]:
    """Orient each (a, b) so every method is left and right equally often, within one.

    Pair up methods of odd degree with dummy edges; then every degree is even and walking
    unused edges until stuck closes a circuit, in which each method is entered as often as
    left. Orienting edges along the walks balances every method; dropping the dummies (at
    most one per method) costs at most one.
    """
    degree: Counter[int] = Counter()
    for a, b in edges:
        degree[a] += 1
        degree[b] += 1
    odd = [v for v in degree if degree[v] % 2]
    rng.shuffle(odd)
    all_edges = edges + [(odd[i], odd[i + 1]) for i in range(0, len(odd), 2)]
    incident: dict[int, list[int]] = defaultdict(list)
    for index, (a, b) in enumerate(all_edges):
        incident[a].append(index)
        incident[b].append(index)
    for lst in incident.values():
        rng.shuffle(lst)
    used = [False] * len(all_edges)
    keep = [True] * len(all_edges)
    starts = list(incident)
    rng.shuffle(starts)
    for start in starts:
        while incident[start]:
            vertex = start
            while incident[vertex]:
                index = incident[vertex].pop()
                if used[index]:
                    continue
                used[index] = True
                a, b = all_edges[index]
                keep[index] = a == vertex  # walking from vertex: vertex is shown left
                vertex = b if a == vertex else a
    return keep[: len(edges)]


def _spread(trials: list[PlannedTrial], rng: random.Random, attempts: int = 100) -> list:
    """Order trials so no item repeats back to back and repeats follow their originals."""
    if len({t.item for t in trials}) > 1:
        for _ in range(attempts):
            order = _try_spread(trials, rng)
            if order is not None:
                return _renumber(trials, order)
    # One item (or no luck): random order, repeats still after their originals.
    order = list(range(len(trials)))
    rng.shuffle(order)
    order.sort(key=lambda i: trials[i].is_repeat)
    return _renumber(trials, order)


def _try_spread(trials: list[PlannedTrial], rng: random.Random) -> list[int] | None:
    waiting: dict[int, list[int]] = defaultdict(list)  # item -> trial indices ready to place
    blocked: dict[int, list[int]] = defaultdict(list)  # original index -> its repeats
    for index, trial in enumerate(trials):
        if trial.is_repeat:
            blocked[trial.repeat_of].append(index)
        else:
            waiting[trial.item].append(index)
    for lst in waiting.values():
        rng.shuffle(lst)
    remaining = Counter(t.item for t in trials)
    order: list[int] = []
    last_item = None
    while len(order) < len(trials):
        choices = [i for i, lst in waiting.items() if lst and i != last_item]
        if not choices:
            return None
        # Favour items with many trials left so they do not pile up at the end.
        item = rng.choices(choices, weights=[remaining[i] for i in choices])[0]
        index = waiting[item].pop()
        order.append(index)
        remaining[item] -= 1
        last_item = item
        for repeat in blocked.pop(index, []):
            waiting[trials[repeat].item].insert(0, repeat)
    return order


def _renumber(trials: list[PlannedTrial], order: list[int]) -> list[PlannedTrial]:
    position = {old: new for new, old in enumerate(order)}
    return [
        PlannedTrial(
            t.item,
            t.left,
            t.right,
            t.is_repeat,
            position[t.repeat_of] if t.repeat_of is not None else None,
        )
        for t in (trials[i] for i in order)
    ]


def bt_posterior(
    n_methods: int,
    left: Sequence[int],
    right: Sequence[int],
    outcome: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian approximation of the Bradley-Terry posterior over log-strengths.

    ``outcome`` is 1 (left won), 2 (right won) or 0 (tie, counted half). The mean is the
    evalica fit; the covariance is the inverse Fisher information there (Laplace), which
    is fast enough to recompute on every request, unlike expectation propagation.
    """
    i, j, winners, weights = with_prior_ties(n_methods, left, right, outcome)
    fit = evalica.bradley_terry(
        i, j, winners, index=pd.Index(range(n_methods)), weights=weights, tie_weight=0.5
    )
    mean = np.log(fit.scores.reindex(range(n_methods)).to_numpy())
    mean -= mean.mean()
    p = 1.0 / (1.0 + np.exp(mean[j] - mean[i]))
    info = np.zeros((n_methods, n_methods))
    w = weights * p * (1.0 - p)
    np.add.at(info, (i, i), w)
    np.add.at(info, (j, j), w)
    np.add.at(info, (i, j), -w)
    np.add.at(info, (j, i), -w)
    # Scores are defined up to a shift; a tiny ridge makes the information invertible.
    cov = np.linalg.inv(info + 1e-3 * np.eye(n_methods))
    return mean, cov


def with_prior_ties(
    n_methods: int, left: Sequence[int], right: Sequence[int], outcome: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, list, np.ndarray]:
    """Comparisons as evalica wants them, plus one light virtual tie per pair of methods."""
    pairs = np.array(list(itertools.combinations(range(n_methods), 2)), dtype=int)
    i = np.concatenate([np.asarray(left, dtype=int), pairs[:, 0]])
    j = np.concatenate([np.asarray(right, dtype=int), pairs[:, 1]])
    codes = list(outcome) + [0] * len(pairs)
    winners = [_WINNER[int(c)] for c in codes]
    weights = np.concatenate([np.ones(len(left)), np.full(len(pairs), PRIOR_TIE_WEIGHT)])
    return i, j, winners, weights


_WINNER = {0: evalica.Winner.Draw, 1: evalica.Winner.X, 2: evalica.Winner.Y}


def expected_order_loss(mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Per pair, the expected score gap by which the current order of the two is wrong.

    sigma * phi(z) - |delta| * Phi(-z) with z = |delta| / sigma: large when the order is
    uncertain, and it shrinks as a pair is compared more even if the two stay level.
    """
    var = np.diag(cov)[:, None] + np.diag(cov)[None, :] - 2.0 * cov
    sigma = np.sqrt(np.maximum(var, 1e-12))
    delta = np.abs(mean[:, None] - mean[None, :])
    z = delta / sigma
    loss = sigma * np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi) - delta * ndtr(-z)
    np.fill_diagonal(loss, 0.0)
    return loss


def choose_active_trial(
    mean: np.ndarray,
    cov: np.ndarray,
    candidates: Sequence[tuple[int, int, int]],
    *,
    pair_counts: dict[tuple[int, int], int],
    side_counts: dict[int, int],
    last_item: int | None = None,
    min_per_pair: int = 2,
    rng: random.Random | None = None,
) -> PlannedTrial:
    """Pick the next (item, method pair) where the ranking is least certain.

    ``candidates`` are (item, i, j) with i < j the rater has not been asked yet, in method
    positions; pairs seen fewer than ``min_per_pair`` times by the whole panel go first.
    ``side_counts`` (left minus right per method, for this rater) decides the sides.
    """
    if not candidates:
        raise ValueError("no candidate comparisons left for this rater.")
    rng = rng or random.Random()
    by_pair: dict[tuple[int, int], list[int]] = defaultdict(list)
    for item, i, j in candidates:
        by_pair[(i, j)].append(item)
    pairs = list(by_pair)
    unseen = [p for p in pairs if pair_counts.get(p, 0) < min_per_pair]
    if unseen:
        fewest = min(pair_counts.get(p, 0) for p in unseen)
        best = [p for p in unseen if pair_counts.get(p, 0) == fewest]
    else:
        loss = expected_order_loss(mean, cov)
        top = max(loss[p] for p in pairs)
        best = [p for p in pairs if loss[p] >= top * (1 - 1e-9)]
    i, j = rng.choice(best)
    items = [it for it in by_pair[(i, j)] if it != last_item] or by_pair[(i, j)]
    item = rng.choice(items)
    bi, bj = side_counts.get(i, 0), side_counts.get(j, 0)
    if bi < bj or (bi == bj and rng.random() < 0.5):
        return PlannedTrial(item, i, j)
    return PlannedTrial(item, j, i)
