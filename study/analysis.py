"""What researchers publish from a study: tallies, scales with confidence intervals, agreement.

Everything here works on a votes table (one row per vote; see :func:`load_votes`) and the
list of method keys, so it can be run on an exported ``votes.csv`` as well as on the live
database. Ties and "both bad" count as half a win for each side in every scale.

- Bradley-Terry log-strengths (evalica), 95% intervals by bootstrapping raters, not votes
  (a rater's votes are not independent), and a rank by significance: one plus the number
  of methods whose interval lies entirely above.
- Thurstone Case V in JOD units: a gap of 1 JOD means 75% of judgements prefer the better.
- Rater quality: flips on side-swapped repeats, circular triads and Kendall's zeta per rater
  and item, Kendall's u and Krippendorff's alpha (evalica) across raters, outliers by
  leave-one-out likelihood (only for raters with enough votes), and response times.
- Position bias: the share of decisive votes for the left image, per rater and overall, with
  exact 95% intervals, and Bradley-Terry with a left/right term (evalica has no such term, so
  it is a small logistic fit here), with whether it changes the ranking.

Intervals need raters to resample: with fewer than ``MIN_RATERS_FOR_INTERVALS`` a rater
bootstrap has too few distinct resamples (2 raters: 3) to mean anything, so no interval is
given and :func:`interval_note` says why.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import evalica
import numpy as np
import pandas as pd
from scipy.special import log_ndtr
from scipy.stats import binomtest, norm

from study.design import PRIOR_TIE_WEIGHT, with_prior_ties

N_BOOTSTRAP = 1000
MIN_RATERS_FOR_INTERVALS = 5  # 126 distinct rater resamples; 2 raters have 3, 3 have 10
MIN_VOTES_FOR_OUTLIER = 10  # decisive votes a rater needs before an outlier flag means anything
# 1 JOD = 75% preference: P(i over j) = Phi((q_i - q_j) / sigma) with Phi(1 / sigma) = 0.75.
JOD_SIGMA = float(1.0 / norm.ppf(0.75))


# ---------------------------------------------------------------------------------------------
# Encoding


def _check_votes(votes: pd.DataFrame, methods: Sequence[str]) -> None:
    missing = [c for c in ("rater", "method_left", "method_right", "choice") if c not in votes]
    if missing:
        raise ValueError(f"votes table lacks columns {missing}; load it with load_votes().")
    unknown = (set(votes["method_left"]) | set(votes["method_right"])) - set(methods)
    if unknown:
        raise ValueError(f"votes mention methods {sorted(unknown)} not in {list(methods)}.")


def _encode(votes: pd.DataFrame, methods: Sequence[str]):
    """Left and right method positions and outcome (1 left won, 2 right won, 0 tie)."""
    index = {m: n for n, m in enumerate(methods)}
    i = votes["method_left"].map(index).to_numpy(dtype=int)
    j = votes["method_right"].map(index).to_numpy(dtype=int)
    outcome = votes["choice"].map({"left": 1, "right": 2}).fillna(0).to_numpy(dtype=int)
    return i, j, outcome


def _count_matrix(i, j, outcome, k: int, weights=None) -> np.ndarray:
    """C[a, b]: judgements preferring a over b, ties counted half to each."""
    w = np.ones(len(i)) if weights is None else np.asarray(weights, dtype=float)
    counts = np.zeros((k, k))
    np.add.at(counts, (i[outcome == 1], j[outcome == 1]), w[outcome == 1])
    np.add.at(counts, (j[outcome == 2], i[outcome == 2]), w[outcome == 2])
    tie = outcome == 0
    np.add.at(counts, (i[tie], j[tie]), 0.5 * w[tie])
    np.add.at(counts, (j[tie], i[tie]), 0.5 * w[tie])
    return counts


# ---------------------------------------------------------------------------------------------
# Tallies


# A choice as the method shown on the right sees it.
_MIRRORED = {"left": "right", "right": "left", "tie": "tie", "both_bad": "both_bad"}


def _tally(as_left: pd.DataFrame, as_right: pd.DataFrame) -> tuple[int, int, int, int, int, float]:
    """(comparisons, wins, losses, ties, both_bad, share) of one method over the votes that
    showed it on the left (``as_left``) and on the right (``as_right``).

    share = (wins + half of ties and both_bad) / comparisons (NaN without comparisons).
    """
    seen = pd.concat([as_left["choice"], as_right["choice"].map(_MIRRORED)])
    counts = seen.value_counts()
    wins, losses, ties, both_bad = (int(counts.get(c, 0)) for c in _MIRRORED)
    n = wins + losses + ties + both_bad
    share = (wins + 0.5 * (ties + both_bad)) / n if n else math.nan
    return n, wins, losses, ties, both_bad, share


def pair_tallies(votes: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Votes per pair of methods: n, wins of each side, ties, both_bad, share of the first."""
    _check_votes(votes, methods)
    rows = []
    for a, b in itertools.combinations(methods, 2):
        ab = votes[(votes["method_left"] == a) & (votes["method_right"] == b)]
        ba = votes[(votes["method_left"] == b) & (votes["method_right"] == a)]
        n, a_wins, b_wins, ties, both_bad, share = _tally(ab, ba)
        rows.append((a, b, n, a_wins, b_wins, ties, both_bad, share))
    columns = ["method_a", "method_b", "votes", "a_wins", "b_wins", "ties", "both_bad", "a_share"]
    return pd.DataFrame(rows, columns=columns)


def outcome_matrices(votes: pd.DataFrame, methods: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Win, tie and loss matrices: ``wins.loc[a, b]`` is how often a was preferred to b."""
    _check_votes(votes, methods)
    i, j, outcome = _encode(votes, methods)
    k = len(methods)
    wins = np.zeros((k, k), dtype=int)
    np.add.at(wins, (i[outcome == 1], j[outcome == 1]), 1)
    np.add.at(wins, (j[outcome == 2], i[outcome == 2]), 1)
    ties = np.zeros((k, k), dtype=int)
    np.add.at(ties, (i[outcome == 0], j[outcome == 0]), 1)
    ties = ties + ties.T
    frame = lambda m: pd.DataFrame(m, index=list(methods), columns=list(methods))  # noqa: E731
    return {"wins": frame(wins), "ties": frame(ties), "losses": frame(wins.T)}


def preference_share(votes: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Per method: comparisons, wins, ties, both_bad, losses and the share of preference.

    share = (wins + half of ties and both_bad) / comparisons: the expert-preference figure.
    """
    _check_votes(votes, methods)
    rows = []
    for m in methods:
        left, right = votes[votes["method_left"] == m], votes[votes["method_right"] == m]
        n, wins, losses, ties, both_bad, share = _tally(left, right)
        rows.append((m, n, wins, ties, both_bad, losses, share))
    columns = ["method", "comparisons", "wins", "ties", "both_bad", "losses", "share"]
    return pd.DataFrame(rows, columns=columns).set_index("method")


# ---------------------------------------------------------------------------------------------
# Scales


def _fit_bt(i, j, outcome, k: int, weights=None) -> np.ndarray:
    ii, jj, winners, w = with_prior_ties(k, i, j, outcome)
    if weights is not None:
        w = w.copy()
        w[: len(i)] = weights
    fit = evalica.bradley_terry(ii, jj, winners, index=pd.Index(range(k)), weights=w)
    scores = np.empty(k)
    scores[fit.scores.index.to_numpy(dtype=int)] = np.log(fit.scores.to_numpy())
    return scores - scores.mean()


def bradley_terry(votes: pd.DataFrame, methods: Sequence[str]) -> pd.Series:
    """Bradley-Terry log-strengths (mean zero); a gap d means P(better wins) = 1/(1+e^-d)."""
    _check_votes(votes, methods)
    return pd.Series(_fit_bt(*_encode(votes, methods), len(methods)), index=list(methods))


def _fit_jod(counts: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """Maximum-likelihood Thurstone Case V scores for a count matrix, by damped Newton steps.

    The negative log-likelihood is convex in the scores; the first score is pinned at 0
    during the fit (scores are defined up to a shift) and the result is centred.
    """
    k = counts.shape[0]
    c = counts + 0.5 * PRIOR_TIE_WEIGHT * (1.0 - np.eye(k))
    q = np.zeros(k) if start is None else start - start[0]
    loss = _jod_loss(c, q)
    for _ in range(100):
        d = (q[:, None] - q[None, :]) / JOD_SIGMA
        mills = np.exp(-0.5 * d**2 - 0.5 * math.log(2 * math.pi) - log_ndtr(d))  # phi / Phi
        g = c * mills / JOD_SIGMA
        grad = -(g.sum(axis=1) - g.sum(axis=0))
        h = c * mills * (d + mills) / JOD_SIGMA**2
        h = h + h.T
        hessian = np.diag(h.sum(axis=1)) - h
        step = np.zeros(k)
        step[1:] = np.linalg.solve(hessian[1:, 1:], grad[1:])
        scale = 1.0
        while scale > 1e-6:
            new_loss = _jod_loss(c, q - scale * step)
            if new_loss <= loss:
                break
            scale /= 2
        q, loss = q - scale * step, new_loss
        if np.abs(scale * step).max() < 1e-9:
            break
    return q - q.mean()


def _jod_loss(c: np.ndarray, q: np.ndarray) -> float:
    return float(-(c * log_ndtr((q[:, None] - q[None, :]) / JOD_SIGMA)).sum())


def thurstone_jod(votes: pd.DataFrame, methods: Sequence[str]) -> pd.Series:
    """Thurstone Case V scale in JOD (mean zero), fitted by maximum likelihood."""
    _check_votes(votes, methods)
    i, j, outcome = _encode(votes, methods)
    return pd.Series(_fit_jod(_count_matrix(i, j, outcome, len(methods))), index=list(methods))


def significance_rank(lower: Sequence[float], upper: Sequence[float]) -> np.ndarray:
    """Rank 1 + the number of others whose lower bound is above this one's upper bound."""
    lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    return 1 + (lower[None, :] > upper[:, None]).sum(axis=1)


def bootstrap_raters(
    votes: pd.DataFrame,
    methods: Sequence[str],
    *,
    n_boot: int = N_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Bradley-Terry and JOD scores refitted on ``n_boot`` resamples of raters (with replacement).

    Returns arrays of shape (n_boot, len(methods)) under "bt" and "jod".
    """
    _check_votes(votes, methods)
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive; got {n_boot}.")
    k = len(methods)
    i, j, outcome = _encode(votes, methods)
    raters, rater_of_vote = np.unique(votes["rater"].astype(str).to_numpy(), return_inverse=True)
    per_rater = np.stack(
        [_count_matrix(i, j, outcome, k, rater_of_vote == r) for r in range(len(raters))]
    )
    jod_start = _fit_jod(per_rater.sum(axis=0))
    rng = np.random.default_rng(seed)
    bt, jod = np.empty((n_boot, k)), np.empty((n_boot, k))
    for b in range(n_boot):
        times = rng.multinomial(len(raters), np.full(len(raters), 1.0 / len(raters)))
        bt[b] = _fit_bt(i, j, outcome, k, times[rater_of_vote].astype(float))
        jod[b] = _fit_jod(np.tensordot(times, per_rater, axes=1), jod_start)
    return {"bt": bt, "jod": jod}


def ratings(
    votes: pd.DataFrame,
    methods: Sequence[str],
    *,
    n_boot: int = N_BOOTSTRAP,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per method: preference share, Bradley-Terry and JOD with rater-bootstrap intervals, rank.

    Intervals are NaN with fewer than ``MIN_RATERS_FOR_INTERVALS`` raters (see
    :func:`interval_note`) or with ``n_boot=0`` (point estimates only); the rank is then by the
    point estimates.
    """
    _check_votes(votes, methods)
    table = preference_share(votes, methods)[["comparisons", "share"]].copy()
    table["bt"] = bradley_terry(votes, methods)
    table["jod"] = thurstone_jod(votes, methods)
    tail = 100 * (1 - confidence) / 2
    if n_boot > 0 and votes["rater"].nunique() >= MIN_RATERS_FOR_INTERVALS:
        samples = bootstrap_raters(votes, methods, n_boot=n_boot, seed=seed)
        for scale in ("bt", "jod"):
            table[f"{scale}_lower"] = np.percentile(samples[scale], tail, axis=0)
            table[f"{scale}_upper"] = np.percentile(samples[scale], 100 - tail, axis=0)
        table["rank"] = significance_rank(table["bt_lower"], table["bt_upper"])
    else:
        for column in ("bt_lower", "bt_upper", "jod_lower", "jod_upper"):
            table[column] = math.nan
        table["rank"] = 1 + (table["bt"].to_numpy()[None, :] > table["bt"].to_numpy()[:, None]).sum(
            axis=1
        )
    order = ["rank", "share", "bt", "bt_lower", "bt_upper", "jod", "jod_lower", "jod_upper"]
    return table[["comparisons", *order]].rename_axis("method")


def interval_note(n_raters: int) -> str:
    """Why there are no intervals (empty when there are): too few raters to resample."""
    if n_raters >= MIN_RATERS_FOR_INTERVALS:
        return ""
    distinct = math.comb(2 * n_raters - 1, n_raters) if n_raters else 0
    return (
        f"No 95% intervals: they come from resampling raters, and {n_raters} rater"
        f"{'' if n_raters == 1 else 's'} give only {distinct} distinct resample"
        f"{'' if distinct == 1 else 's'}; intervals need at least {MIN_RATERS_FOR_INTERVALS} "
        "raters. The scores are point estimates."
    )


# ---------------------------------------------------------------------------------------------
# Position bias


def _left_share(outcome: np.ndarray, confidence: float = 0.95) -> dict:
    """Share of decisive votes for the left image, with an exact (Clopper-Pearson) interval."""
    left, n = int((outcome == 1).sum()), int((outcome != 0).sum())
    if n == 0:
        return {"decisive": 0, "left_share": math.nan, "lower": math.nan, "upper": math.nan}
    ci = binomtest(left, n, 0.5).proportion_ci(confidence, method="exact")
    return {"decisive": n, "left_share": left / n, "lower": ci.low, "upper": ci.high}


def _fit_bt_position(i, j, outcome, k: int, ridge: float = 1e-3) -> tuple[np.ndarray, float, float]:
    """Bradley-Terry with a left/right term: P(left wins) = 1 / (1 + exp(-(s_i - s_j + h))).

    Ties count half a win each (as in every scale here). Newton's method on the logistic
    likelihood with a tiny ridge (scores are defined up to a shift; the first is pinned).
    Returns the centred scores, ``h`` and its standard error.
    """
    n = len(i)
    x = np.zeros((n, k))  # columns: methods 1..k-1 (0 pinned), then the position term
    rows = np.arange(n)
    x[rows, i] += 1.0
    x[rows, j] -= 1.0
    x = np.column_stack([x[:, 1:], np.ones(n)])
    y = np.where(outcome == 1, 1.0, np.where(outcome == 2, 0.0, 0.5))
    beta = np.zeros(x.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        grad = x.T @ (y - p) - ridge * beta
        hessian = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(len(beta))
        step = np.linalg.solve(hessian, grad)
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    cov = np.linalg.inv(hessian)
    scores = np.concatenate([[0.0], beta[:-1]])
    return scores - scores.mean(), float(beta[-1]), float(math.sqrt(cov[-1, -1]))


def position_bias(votes: pd.DataFrame, methods: Sequence[str]) -> dict:
    """Left/right preference overall and per rater, and Bradley-Terry with a position term.

    ``overall`` and each of ``raters``: decisive votes, the share for the left image and its
    exact 95% interval (0.5 = no bias). ``bt_position``: the term ``h`` in log-odds for the
    left image with a Wald 95% interval, the method scores fitted beside it, and whether
    ranking the methods by them differs from plain Bradley-Terry (``ranking_changed``).
    """
    _check_votes(votes, methods)
    i, j, outcome = _encode(votes, methods)
    raters = votes["rater"].astype(str).to_numpy()
    report = {
        "overall": _left_share(outcome),
        "raters": [{"rater": r, **_left_share(outcome[raters == r])} for r in np.unique(raters)],
    }
    if len(votes) == 0:
        return {**report, "bt_position": {}}
    scores, h, se = _fit_bt_position(i, j, outcome, len(methods))
    plain = _fit_bt(i, j, outcome, len(methods))
    z = norm.ppf(0.975)
    report["bt_position"] = {
        "h": h,
        "h_lower": h - z * se,
        "h_upper": h + z * se,
        "scores": dict(zip(methods, scores.tolist(), strict=True)),
        "ranking": [methods[n] for n in np.argsort(-scores, kind="stable")],
        "ranking_without": [methods[n] for n in np.argsort(-plain, kind="stable")],
    }
    report["bt_position"]["ranking_changed"] = (
        report["bt_position"]["ranking"] != report["bt_position"]["ranking_without"]
    )
    return report


# ---------------------------------------------------------------------------------------------
# Consistency and agreement (Kendall & Babington Smith 1940)


def _check_square(matrix: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"{name} must be a square matrix; got shape {m.shape}.")
    if np.any(np.diag(m) != 0):
        raise ValueError(f"{name} must have zeros on the diagonal (an object against itself).")
    return m


def max_circular_triads(n: int) -> int:
    """Most circular triads a tournament of n objects can hold: (n^3-n)/24 odd, (n^3-4n)/24 even."""
    return (n**3 - n) // 24 if n % 2 else (n**3 - 4 * n) // 24


def circular_triads(preferences: np.ndarray) -> float:
    """Circular triads (a>b>c>a) in one judge's complete paired comparisons.

    ``preferences[a, b]`` is 1 when a was preferred to b (0.5 each way for a tie). Uses
    Kendall's count T = n(n-1)(2n-1)/12 - sum(a_i^2)/2 over the row scores a_i.
    """
    p = _check_square(preferences, "preferences")
    off = ~np.eye(len(p), dtype=bool)
    if not np.allclose((p + p.T)[off], 1.0):
        raise ValueError("preferences must hold exactly one judgement per pair (p[a,b]+p[b,a]=1).")
    n = len(p)
    scores = p.sum(axis=1)
    return float(n * (n - 1) * (2 * n - 1) / 12 - 0.5 * (scores**2).sum())


def kendall_zeta(preferences: np.ndarray) -> float:
    """Kendall's coefficient of consistency: 1 - T / T_max (1 = no circular triads)."""
    t_max = max_circular_triads(len(preferences))
    if t_max == 0:
        return math.nan
    return 1.0 - circular_triads(preferences) / t_max


def kendall_u(counts: np.ndarray, n_judges: int) -> float:
    """Kendall's coefficient of agreement among ``n_judges`` who each judged every pair once.

    ``counts[a, b]`` is how many judges preferred a to b (ties may count half). u = 1 for
    complete agreement; its minimum is -1/(m-1) for even m and -1/m for odd m.
    """
    a = _check_square(counts, "counts")
    m, n = int(n_judges), len(a)
    off = ~np.eye(n, dtype=bool)
    if m < 2 or n < 2:
        raise ValueError(f"Kendall's u needs at least 2 judges and 2 objects; got {m} and {n}.")
    if not np.allclose((a + a.T)[off], m):
        raise ValueError(f"counts[a,b] + counts[b,a] must equal n_judges={m} for every pair.")
    agreements = (a[off] * (a[off] - 1) / 2).sum()  # sum over ordered pairs of C(a_ab, 2)
    return float(2 * agreements / (math.comb(m, 2) * math.comb(n, 2)) - 1)


def _first_judgements(votes: pd.DataFrame) -> pd.DataFrame:
    """Votes on non-repeat trials: each rater's one judgement per item and pair."""
    if "is_repeat" not in votes:
        return votes
    return votes[~votes["is_repeat"].astype(bool)]


def _preference_matrix(group: pd.DataFrame, methods: Sequence[str]) -> np.ndarray | None:
    """A rater's tournament over one item, or None unless every pair was judged exactly once."""
    k = len(methods)
    if len(group) != k * (k - 1) // 2:
        return None
    i, j, outcome = _encode(group, methods)
    p = _count_matrix(i, j, outcome, k)
    off = ~np.eye(k, dtype=bool)
    return p if np.allclose((p + p.T)[off], 1.0) else None


def rater_consistency(votes: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Per rater: complete item tournaments, total circular triads and mean Kendall's zeta."""
    rows = []
    for rater, group in _first_judgements(votes).groupby("rater"):
        triads, zetas = [], []
        for _, per_item in group.groupby("item"):
            p = _preference_matrix(per_item, methods)
            if p is not None:
                triads.append(circular_triads(p))
                zetas.append(kendall_zeta(p))
        rows.append(
            (
                rater,
                len(triads),
                float(np.sum(triads)) if triads else math.nan,
                float(np.nanmean(zetas)) if zetas and not np.all(np.isnan(zetas)) else math.nan,
            )
        )
    columns = ["rater", "tournaments", "circular_triads", "zeta"]
    return pd.DataFrame(rows, columns=columns).set_index("rater")


def repeat_consistency(votes: pd.DataFrame) -> pd.DataFrame:
    """Per rater: answered repeat pairs and how often the answer flipped on the swapped repeat."""
    columns = ["repeat_pairs", "flips", "flip_rate"]
    if "repeat_of" not in votes or "trial" not in votes:
        return pd.DataFrame(columns=columns).rename_axis("rater")
    outcome = votes["choice"].where(~votes["choice"].isin(["left", "right"]))
    outcome = outcome.fillna(
        votes["method_left"].where(votes["choice"] == "left", votes["method_right"])
    )
    by_trial = pd.Series(outcome.to_numpy(), index=votes["trial"].to_numpy())
    repeats = votes[votes["is_repeat"].astype(bool) & votes["repeat_of"].notna()]
    rows = {}
    for rater, group in repeats.groupby("rater"):
        pairs = flips = 0
        for _, vote in group.iterrows():
            original = by_trial.get(int(vote["repeat_of"]))
            if original is None:
                continue
            pairs += 1
            flips += original != by_trial[int(vote["trial"])]
        rows[rater] = (pairs, flips, flips / pairs if pairs else math.nan)
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns).rename_axis("rater")


def kendall_u_by_item(votes: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Kendall's u per item, over the raters who judged every pair of that item once."""
    rows = []
    for item, group in _first_judgements(votes).groupby("item"):
        total, judges = np.zeros((len(methods),) * 2), 0
        for _, per_rater in group.groupby("rater"):
            p = _preference_matrix(per_rater, methods)
            if p is not None:
                total, judges = total + p, judges + 1
        if judges >= 2:
            rows.append((item, judges, kendall_u(total, judges)))
    return pd.DataFrame(rows, columns=["item", "raters", "u"])


def krippendorff_alpha(votes: pd.DataFrame, methods: Sequence[str]) -> float:
    """Krippendorff's alpha (ordinal) over units (item, pair): first wins / tie / second wins.

    Every unit enters in both orientations, (a, b) and (b, a) with the value negated, so
    alpha does not depend on which method of a pair happens to be called first.
    """
    first = _first_judgements(votes)
    if first.empty:
        return math.nan
    i, j, outcome = _encode(first, methods)
    value = np.where(outcome == 1, 1.0, np.where(outcome == 2, -1.0, 0.0))
    items = first["item"].astype(str).to_numpy()
    raters = first["rater"].astype(str).to_numpy()
    table = pd.DataFrame(
        {
            "rater": np.concatenate([raters, raters]),
            "unit": [f"{it}|{a}|{b}" for it, a, b in zip(items, i, j, strict=True)]
            + [f"{it}|{b}|{a}" for it, a, b in zip(items, i, j, strict=True)],
            "value": np.concatenate([value, -value]),
        }
    )
    wide = table.pivot_table(index="rater", columns="unit", values="value", aggfunc="first")
    try:
        return float(evalica.alpha(wide, distance="ordinal").alpha)
    except evalica.InsufficientRatingsError:
        return math.nan


def loo_outliers(votes: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Per rater, how well the Bradley-Terry fit of all *other* raters predicts their votes.

    ``loo_loglik`` is the mean log-likelihood of the rater's decisive votes, ``loo_agreement``
    the share of them on the side the others favour. A rater is flagged when they side with
    the others significantly less than half the time (one-sided binomial test, p < 0.05),
    or when their likelihood is below the lower Tukey fence (Q1 - 1.5 IQR) of all raters.
    Only raters with at least ``MIN_VOTES_FOR_OUTLIER`` decisive votes are flagged or count
    towards the fence. Ties are left out: no model predicts a tie better than chance.
    """
    _check_votes(votes, methods)
    i, j, outcome = _encode(votes, methods)
    raters = votes["rater"].astype(str).to_numpy()
    rows = {}
    for rater in np.unique(raters):
        others = raters != rater
        own = (raters == rater) & (outcome != 0)
        if not own.any() or not others.any():
            rows[rater] = (math.nan, math.nan, False, False)
            continue
        scores = _fit_bt(i[others], j[others], outcome[others], len(methods))
        signed_gap = (scores[i[own]] - scores[j[own]]) * np.where(outcome[own] == 1, 1.0, -1.0)
        loglik = float(-np.logaddexp(0.0, -signed_gap).mean())
        decided = signed_gap != 0
        agree = int((signed_gap[decided] > 0).sum())
        n = int(decided.sum())
        against = n > 0 and binomtest(agree, n, 0.5, alternative="less").pvalue < 0.05
        enough = n >= MIN_VOTES_FOR_OUTLIER
        rows[rater] = (loglik, agree / n if n else math.nan, bool(against and enough), enough)
    columns = ["loo_loglik", "loo_agreement", "outlier", "enough"]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    ll = table["loo_loglik"].where(table["enough"])
    if ll.notna().sum() >= 4:
        q1, q3 = np.nanpercentile(ll, [25, 75])
        table["outlier"] |= (ll < q1 - 1.5 * (q3 - q1)).fillna(False)
    return table.drop(columns="enough").rename_axis("rater")


def response_times(votes: pd.DataFrame) -> pd.Series:
    """Median reading time in ms per rater: the browser's, from both images drawn to the
    answer; the server's round trip (``response_ms``) only where the browser measured none."""
    if "response_ms" not in votes and "reading_ms" not in votes:
        return pd.Series(dtype=float, name="median_response_ms")
    times = pd.Series(math.nan, index=votes.index)
    if "reading_ms" in votes:
        times = pd.to_numeric(votes["reading_ms"], errors="coerce").astype(float)
    if "response_ms" in votes:
        times = times.fillna(pd.to_numeric(votes["response_ms"], errors="coerce"))
    return times.groupby(votes["rater"]).median().rename("median_response_ms")


def rater_quality(votes: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """One row per rater: votes, repeat flips, circular triads, zeta, LOO likelihood, times."""
    _check_votes(votes, methods)
    table = votes.groupby("rater").size().rename("votes").to_frame()
    table = table.join(repeat_consistency(votes)).join(rater_consistency(votes, methods))
    table = table.join(loo_outliers(votes, methods)).join(response_times(votes))
    return table.rename_axis("rater")


def agreement(votes: pd.DataFrame, methods: Sequence[str]) -> dict:
    """Panel agreement: mean Kendall's u over items and Krippendorff's alpha."""
    per_item = kendall_u_by_item(votes, methods)
    return {
        "kendall_u_mean": float(per_item["u"].mean()) if len(per_item) else math.nan,
        "kendall_u_items": int(len(per_item)),
        "krippendorff_alpha": krippendorff_alpha(votes, methods),
    }


# ---------------------------------------------------------------------------------------------
# Whole-study report


def analyse(
    votes: pd.DataFrame,
    methods: Sequence[str],
    *,
    n_boot: int = N_BOOTSTRAP,
    seed: int = 0,
) -> dict:
    """Everything above, overall and per modality, as plain JSON-ready data."""
    _check_votes(votes, methods)
    report = {
        "votes": int(len(votes)),
        "raters": int(votes["rater"].nunique()),
        "methods": list(methods),
        "n_bootstrap": n_boot,
        "intervals": interval_note(int(votes["rater"].nunique())),
        "min_votes_for_outlier": MIN_VOTES_FOR_OUTLIER,
        "overall": _section(votes, methods, n_boot, seed),
        "position_bias": position_bias(votes, methods),
        "by_modality": {},
        "rater_quality": _records(rater_quality(votes, methods).reset_index())
        if len(votes)
        else [],
    }
    if "modality" in votes and votes["modality"].nunique() > 1:
        for modality, group in votes.groupby("modality"):
            report["by_modality"][str(modality)] = _section(group, methods, n_boot, seed)
    return _json_ready(report)


def _json_ready(value):
    """NaN becomes None and numpy scalars plain Python, all the way down."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _section(votes: pd.DataFrame, methods: Sequence[str], n_boot: int, seed: int) -> dict:
    if votes.empty:
        return {"votes": 0, "pairs": [], "ratings": [], "agreement": {}}
    return {
        "votes": int(len(votes)),
        "pairs": _records(pair_tallies(votes, methods)),
        "ratings": _records(ratings(votes, methods, n_boot=n_boot, seed=seed).reset_index()),
        "agreement": agreement(votes, methods),
    }


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts of plain Python values, NaN as None (valid JSON)."""
    clean = frame.astype(object).where(frame.notna(), None)
    return [
        {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
        for row in clean.to_dict(orient="records")
    ]


VOTE_COLUMNS = [
    "study",
    "rater",
    "rater_specialty",
    "item",
    "modality",
    "method_left",
    "method_right",
    "choice",
    "chosen_method",
    "is_repeat",
    "trial",
    "repeat_of",
    "response_ms",
    "reading_ms",
    "timestamp",
    "client_ts",
]
"""The columns of `load_votes`, in order."""


def load_votes(db, study_id: str) -> pd.DataFrame:
    """One row per vote with rater pseudonym, item, modality, methods by key and the choice."""
    rows = db.query(
        """SELECT s.id AS study, r.pseudonym AS rater, r.specialty AS rater_specialty,
                  i.original_file AS item, i.modality, ml.key AS method_left,
                  mr.key AS method_right, v.choice, mc.key AS chosen_method, t.is_repeat,
                  t.id AS trial, t.repeat_of, v.response_ms, v.reading_ms,
                  v.server_ts AS timestamp, v.client_ts
           FROM votes v JOIN trials t ON t.id = v.trial JOIN raters r ON r.id = t.rater
           JOIN studies s ON s.id = r.study JOIN items i ON i.id = t.item
           JOIN methods ml ON ml.id = t.left_method JOIN methods mr ON mr.id = t.right_method
           LEFT JOIN methods mc ON mc.id = v.chosen_method
           WHERE s.id = ? ORDER BY v.id""",
        [study_id],
    )
    frame = pd.DataFrame(rows, columns=VOTE_COLUMNS)
    frame["is_repeat"] = frame["is_repeat"].astype(bool)
    return frame


def analyse_study(db, study_id: str, *, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """:func:`analyse` on a study in the database, with the study's title, labels and settings."""
    from study.create import get_study

    study = get_study(db, study_id)
    methods = [m["key"] for m in study["methods"]]
    report = analyse(load_votes(db, study_id), methods, n_boot=n_boot, seed=seed)
    report["study"] = {
        "id": study["id"],
        "title": study["title"],
        "created": study["created"],
        "status": study["status"],
        "settings": study["settings"],
        "labels": {m["key"]: m["label"] for m in study["methods"]},
    }
    return report


def format_report(report: dict) -> str:
    """A readable terminal summary of :func:`analyse_study`'s report."""
    study = report.get("study", {})
    lines = [
        f"Study {study.get('id', '?')}: {study.get('title', '')}",
        f"{report['votes']} votes from {report['raters']} raters; "
        + (
            report.get("intervals")
            or f"95% intervals from {report['n_bootstrap']} rater resamples."
        ),
        "",
    ]
    sections = [("All images", report["overall"])] + [
        (f"Modality: {name}", section) for name, section in report["by_modality"].items()
    ]
    for title, section in sections:
        lines += [title, *_format_section(section), ""]
    lines += ["Position bias", *format_position_bias(report.get("position_bias") or {}), ""]
    lines += ["Raters", *_format_raters(report["rater_quality"])]
    lines.append(
        f"  (outlier flags need at least {report.get('min_votes_for_outlier')} decisive votes)"
    )
    return "\n".join(lines)


def format_position_bias(bias: dict) -> list[str]:
    """Lines on the left/right preference and whether a position term changes the ranking."""
    overall = bias.get("overall") or {}
    if not overall.get("decisive"):
        return ["  no decisive votes yet"]
    out = [
        f"  left chosen in {overall['left_share']:.0%} of {overall['decisive']} decisive votes "
        f"(95% CI {overall['lower']:.0%}-{overall['upper']:.0%}; 50% = no bias)"
    ]
    fit = bias.get("bt_position") or {}
    if fit:
        changed = "changes" if fit["ranking_changed"] else "does not change"
        out.append(
            f"  Bradley-Terry position term {fit['h']:+.2f} log-odds for the left image "
            f"[{fit['h_lower']:+.2f}, {fit['h_upper']:+.2f}]; it {changed} the ranking"
        )
    return out


def _format_section(section: dict) -> list[str]:
    if not section.get("ratings"):
        return ["  no votes yet"]
    header = f"  {'rank':>4}  {'method':<14}{'share':>7}  {'BT [95% CI]':<24}{'JOD [95% CI]':<24}"
    out = [header]
    for r in sorted(section["ratings"], key=lambda r: (r["rank"], -r["bt"])):
        out.append(
            f"  {r['rank']:>4}  {r['method']:<14}{_num(r['share'], '.0%'):>7}  "
            f"{interval(r['bt'], r['bt_lower'], r['bt_upper']):<24}"
            f"{interval(r['jod'], r['jod_lower'], r['jod_upper']):<24}"
        )
    agree = section["agreement"]
    out.append(
        f"  agreement: Kendall u {_num(agree.get('kendall_u_mean'), '.2f')} "
        f"({agree.get('kendall_u_items', 0)} items), "
        f"Krippendorff alpha {_num(agree.get('krippendorff_alpha'), '.2f')}"
    )
    return out


def _format_raters(rows: list[dict]) -> list[str]:
    if not rows:
        return ["  none yet"]
    out = [f"  {'rater':<6}{'votes':>6}{'flip rate':>10}{'zeta':>7}{'LOO ll':>8}{'median ms':>11}"]
    for r in rows:
        flag = "  OUTLIER" if r.get("outlier") else ""
        out.append(
            f"  {r['rater']:<6}{r['votes']:>6}{_num(r.get('flip_rate'), '.0%'):>10}"
            f"{_num(r.get('zeta'), '.2f'):>7}{_num(r.get('loo_loglik'), '.2f'):>8}"
            f"{_num(r.get('median_response_ms'), '.0f'):>11}{flag}"
        )
    return out


def _num(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def interval(value: float | None, lower: float | None, upper: float | None) -> str:
    """``+0.42 [-0.10, +0.95]``; just the value without bounds, ``-`` without a value."""
    if value is None:
        return "-"
    if lower is None or upper is None:
        return f"{value:+.2f}"
    return f"{value:+.2f} [{lower:+.2f}, {upper:+.2f}]"
