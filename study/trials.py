"""Raters, their trial plans, serving the next trial and recording votes.

What leaves this module towards a rater is a :class:`Trial`: a trial id, two opaque image
names (and that of their low-quality source) and progress. Method keys and labels stay
server-side.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import secrets
from dataclasses import dataclass

from study.create import get_study
from study.db import CHOICES, NotFoundError, StudyDB, StudyError, log_event, now_iso
from study.design import PlannedTrial, balanced_plan, bt_posterior, choose_active_trial

MAX_YEARS = 80  # a profile's years of experience; more is a typo
INVITE_BYTES = 16  # 128 random bits per invite code: guessing one is hopeless
MAX_CODE_CHARS = 256  # longer input cannot be a code; refused before hashing
MAX_RESPONSE_MS = 2**31 - 1  # about 25 days; a longer time is not a response time
MAX_ID = 2**63 - 1  # SQLite's largest integer; a bigger id cannot name a row


class InvalidInviteError(StudyError):
    """The invite code is not known."""


class RaterRevokedError(InvalidInviteError):
    """The study team withdrew this rater's invite code; it no longer signs in or votes."""


REVOKED = (
    "this invite code was withdrawn by the study team; ask them whether to continue with a new one."
)


class StudyNotOpenError(StudyError):
    """The study is still being created, or closed."""


class VoteConflictError(StudyError):
    """The trial was already answered with a different choice; votes are never overwritten."""


@dataclass(frozen=True)
class Invite:
    """A new rater. ``code`` is shown once and never stored; only its hash is."""

    rater_id: int
    pseudonym: str
    code: str


@dataclass(frozen=True)
class Trial:
    """What a rater is shown: nothing here may reveal a method.

    ``source`` is the opaque name of the low-quality input both candidates were made from
    (the same for every method), or None when the study's ``show_source`` setting is off.
    """

    trial_id: int
    left: str
    right: str
    done: int
    total: int
    source: str | None = None

    def as_dict(self) -> dict:
        """The JSON-ready form sent to a rater's browser."""
        return {
            "trial_id": self.trial_id,
            "left": self.left,
            "right": self.right,
            "progress": {"done": self.done, "total": self.total},
        }


@dataclass(frozen=True)
class Vote:
    """A stored vote. ``duplicate`` is True when the same vote had already been recorded."""

    trial_id: int
    choice: str
    server_ts: str
    duplicate: bool = False


def hash_code(code: str) -> str:
    """The sha256 hex digest under which an invite code is stored."""
    # surrogatepass: a lone surrogate sent by a client hashes to no code instead of raising.
    return hashlib.sha256(code.strip().encode("utf-8", "surrogatepass")).hexdigest()


def invite_rater(
    db: StudyDB,
    study_id: str,
    name: str,
    *,
    specialty: str = "",
    years_experience: int | None = None,
    seed: int | None = None,
) -> Invite:
    """Add a rater and their trial plan; return the invite code (shown once, stored hashed)."""
    if not str(name).strip():
        raise StudyError("rater name is empty; give a name the study team will recognise.")
    if years_experience is not None and (int(years_experience) < 0):
        raise StudyError(f"years_experience must be >= 0; got {years_experience}.")
    study = _open_study(db, study_id)
    code = secrets.token_urlsafe(INVITE_BYTES)
    plan_seed = seed if seed is not None else secrets.randbits(31)
    with db.atomic() as tx:
        count = tx.execute("SELECT count(*) FROM raters WHERE study = ?", [study_id]).fetchone()[0]
        pseudonym = f"R{count + 1:02d}"
        row = {
            "study": study_id,
            "pseudonym": pseudonym,
            "display_name": str(name).strip(),
            "specialty": str(specialty).strip(),
            "years_experience": years_experience,
            "token_hash": hash_code(code),
            "created": now_iso(),
            "plan_seed": plan_seed,
        }
        rater_id = tx["raters"].insert(row).last_pk
        if study["settings"]["design"] == "balanced":
            _insert_balanced_plan(db, study, rater_id, plan_seed)
        log_event(db, study_id, "rater_invited", json.dumps({"rater": pseudonym}))
    return Invite(rater_id, pseudonym, code)


def _open_study(db: StudyDB, study_id: str) -> dict:
    study = get_study(db, study_id)
    if study["status"] == "creating":
        raise StudyNotOpenError(
            f"study {study_id} is still being created; finish it with "
            f"`python -m study create --resume {study_id} ...` first."
        )
    if study["status"] != "open":
        raise StudyNotOpenError(f"study {study_id} is {study['status']}; it takes no more votes.")
    return study


def _insert_balanced_plan(db: StudyDB, study: dict, rater_id: int, plan_seed: int) -> None:
    items = [r["id"] for r in db.query("SELECT id FROM items WHERE study = ?", [study["id"]])]
    methods = [m["id"] for m in study["methods"]]
    plan = balanced_plan(
        items,
        methods,
        repeat_fraction=study["settings"]["repeat_fraction"],
        rng=random.Random(plan_seed),
    )
    ids: list[int] = []
    for index, trial in enumerate(plan):
        repeat_of = ids[trial.repeat_of] if trial.repeat_of is not None else None
        ids.append(_insert_trial(db, rater_id, trial, index, repeat_of))


def _insert_trial(
    db: StudyDB, rater_id: int, trial: PlannedTrial, order_index: int, repeat_of: int | None
) -> int:
    cursor = db.conn.execute(
        """INSERT INTO trials
           (rater, item, left_method, right_method, order_index, is_repeat, repeat_of)
           VALUES (?, ?, ?, ?, ?, ?, ?)""",
        [
            rater_id,
            trial.item,
            trial.left,
            trial.right,
            order_index,
            int(trial.is_repeat),
            repeat_of,
        ],
    )
    return cursor.lastrowid


def rater_by_token(db: StudyDB, code: str) -> dict:
    """The rater an invite code belongs to (id, study, pseudonym, ...); marks them as seen.

    The code is looked up by its sha256 digest, never compared as text, so how long the
    lookup takes says nothing about how much of a guess was right.
    """
    rater = []
    if isinstance(code, str) and len(code) <= MAX_CODE_CHARS:
        rater = db.query(
            """SELECT id, study, pseudonym, display_name, specialty, years_experience, revoked
               FROM raters WHERE token_hash = ?""",
            [hash_code(code)],
        )
    if not rater:
        raise InvalidInviteError(
            "this invite code is not valid; check it for typos or ask the study team for a new one."
        )
    if rater[0].pop("revoked"):
        raise RaterRevokedError(REVOKED)
    with db.atomic() as tx:
        tx.execute("UPDATE raters SET last_seen = ? WHERE id = ?", [now_iso(), rater[0]["id"]])
    return rater[0]


def update_rater(
    db: StudyDB,
    rater_id: int,
    *,
    specialty: str | None = None,
    years_experience: int | None = None,
) -> dict:
    """Change a rater's profile; None leaves a field as it is. Returns the stored profile.

    Raters fill this in themselves after joining, so bad values raise :class:`StudyError`
    with a message for them.
    """
    changes = {}
    if specialty is not None:
        changes["specialty"] = str(specialty).strip()
    if years_experience is not None:
        changes["years_experience"] = _check_years(years_experience)
    rater = active_rater(db, rater_id)
    if changes:
        with db.atomic() as tx:
            tx["raters"].update(rater_id, changes)
            detail = json.dumps({"rater": rater["pseudonym"], "fields": sorted(changes)})
            log_event(db, rater["study"], "rater_profile_updated", detail)
    return db.query_one(
        "SELECT specialty, years_experience FROM raters WHERE id = ?",
        [rater_id],
        missing=f"no rater with id {rater_id}.",
    )


def _check_years(value) -> int:
    try:
        years = float(value)
    except (TypeError, ValueError):
        years = math.nan
    if not years.is_integer() or not 0 <= years <= MAX_YEARS:
        raise StudyError(
            f"years of experience must be a whole number from 0 to {MAX_YEARS}; got {value!r}."
        )
    return int(years)


def revoke_rater(db: StudyDB, study_id: str, pseudonym: str) -> dict:
    """Withdraw a rater's invite code: it no longer signs in, and open sessions stop voting.

    Their votes so far stay in the study. Withdrawing twice changes nothing. Returns the
    rater's ``pseudonym``, ``revoked`` (when) and ``votes`` (how many they gave).
    """
    get_study(db, study_id)
    name = str(pseudonym).strip().upper()
    with db.atomic() as tx:
        rater = db.query_one(
            "SELECT id, pseudonym, revoked FROM raters WHERE study = ? AND pseudonym = ?",
            [study_id, name],
            missing=f"study {study_id} has no rater {name!r}; raters are named R01, R02, ...",
        )
        if rater["revoked"] is None:
            rater["revoked"] = now_iso()
            tx["raters"].update(rater["id"], {"revoked": rater["revoked"]})
            log_event(db, study_id, "rater_revoked", json.dumps({"rater": rater["pseudonym"]}))
    votes = db.query_one(
        "SELECT count(v.id) AS n FROM trials t JOIN votes v ON v.trial = t.id WHERE t.rater = ?",
        [rater["id"]],
        missing="no rater",
    )["n"]
    return {"pseudonym": rater["pseudonym"], "revoked": rater["revoked"], "votes": votes}


def active_rater(db: StudyDB, rater_id: int) -> dict:
    """A signed-in rater's id, study, pseudonym and plan seed; refuses a withdrawn code.

    Raises :class:`~study.db.NotFoundError` for an unknown id and :class:`RaterRevokedError`
    once the study team has withdrawn the rater's code.
    """
    rater = db.query_one(
        "SELECT id, study, pseudonym, plan_seed, revoked FROM raters WHERE id = ?",
        [_check_id(rater_id, "rater")],
        missing=f"no rater with id {rater_id}; sign in again with your invite code.",
    )
    if rater.pop("revoked"):
        raise RaterRevokedError(REVOKED)
    return rater


def next_trial(db: StudyDB, rater_id: int) -> Trial | None:
    """The rater's next unanswered trial, or None when they are done (or the study closed).

    A rater who comes back continues where they stopped. In an active study the next pair
    is chosen now, from all votes so far.
    """
    rater = active_rater(db, rater_id)
    study = get_study(db, rater["study"])
    if study["status"] != "open":
        return None
    trial = _first_unanswered(db, rater_id)
    if trial is None and study["settings"]["design"] == "active":
        with db.atomic():
            # Inside the write lock: a second tab may have planned one meanwhile.
            trial = _first_unanswered(db, rater_id)
            if trial is None and _plan_active_trial(db, study, rater) is not None:
                trial = _first_unanswered(db, rater_id)
    if trial is None:
        return None
    done, total = _progress_of(db, rater_id)
    source = trial["source_name"] if study["settings"].get("show_source", True) else None
    return Trial(trial["id"], trial["left_name"], trial["right_name"], done, total, source)


def _first_unanswered(db: StudyDB, rater_id: int) -> dict | None:
    rows = db.query(
        """SELECT t.id, sl.opaque_name AS left_name, sr.opaque_name AS right_name,
                  i.input_name AS source_name
           FROM trials t
           JOIN items i ON i.id = t.item
           JOIN stimuli sl ON sl.item = t.item AND sl.method = t.left_method
           JOIN stimuli sr ON sr.item = t.item AND sr.method = t.right_method
           LEFT JOIN votes v ON v.trial = t.id
           WHERE t.rater = ? AND v.id IS NULL
           ORDER BY t.order_index LIMIT 1""",
        [rater_id],
    )
    return rows[0] if rows else None


def _progress_of(db: StudyDB, rater_id: int) -> tuple[int, int]:
    row = db.query_one(
        """SELECT count(t.id) AS planned, count(v.id) AS done, r.study
           FROM raters r LEFT JOIN trials t ON t.rater = r.id
           LEFT JOIN votes v ON v.trial = t.id WHERE r.id = ?""",
        [rater_id],
        missing=f"no rater with id {rater_id}.",
    )
    study = get_study(db, row["study"])
    if study["settings"]["design"] == "active":
        return row["done"], max(_active_budget(db, study), row["planned"])
    return row["done"], row["planned"]


def _active_budget(db: StudyDB, study: dict) -> int:
    settings = study["settings"]
    if settings.get("trials_per_rater"):
        return int(settings["trials_per_rater"])
    n_items = db.query_one(
        "SELECT count(*) AS n FROM items WHERE study = ?", [study["id"]], missing="no study"
    )["n"]
    k = len(study["methods"])
    complete = n_items * k * (k - 1) // 2
    return complete + round(settings["repeat_fraction"] * complete)


def _plan_active_trial(db: StudyDB, study: dict, rater: dict) -> int | None:
    """Insert the rater's next active trial (inside the caller's transaction); its id or None."""
    asked = db.query(
        """SELECT t.id, t.item, t.left_method, t.right_method, t.order_index, t.is_repeat,
                  t.repeat_of, v.id AS vote FROM trials t LEFT JOIN votes v ON v.trial = t.id
           WHERE t.rater = ? ORDER BY t.order_index""",
        [rater["id"]],
    )
    if len(asked) >= _active_budget(db, study):
        return None
    rng = random.Random(rater["plan_seed"] * 1_000_003 + len(asked))
    last_item = asked[-1]["item"] if asked else None
    planned = _due_repeat(asked, study["settings"]["repeat_fraction"], last_item, rng)
    if planned is None:
        planned = _choose_active(db, study, asked, last_item, rng)
    if planned is None:
        return None
    trial, repeat_of = planned
    return _insert_trial(db, rater["id"], trial, len(asked), repeat_of)


def _due_repeat(asked: list[dict], fraction: float, last_item, rng: random.Random):
    """Every 1/fraction trials, a side-swapped repeat of an answered trial."""
    if fraction <= 0 or (len(asked) + 1) % max(2, round(1 / fraction)):
        return None
    repeated = {a["repeat_of"] for a in asked if a["is_repeat"]}
    pool = [
        a
        for a in asked
        if not a["is_repeat"]
        and a["vote"] is not None
        and a["item"] != last_item
        and a["id"] not in repeated
    ]
    if not pool:
        return None
    original = rng.choice(pool)
    swapped = PlannedTrial(
        original["item"], original["right_method"], original["left_method"], True
    )
    return swapped, original["id"]


def _choose_active(db: StudyDB, study: dict, asked: list[dict], last_item, rng):
    """The comparison the panel's Bradley-Terry posterior is least sure about."""
    method_ids = [m["id"] for m in study["methods"]]
    position = {mid: n for n, mid in enumerate(method_ids)}
    items = [r["id"] for r in db.query("SELECT id FROM items WHERE study = ?", [study["id"]])]
    seen = {
        (a["item"], *sorted((position[a["left_method"]], position[a["right_method"]])))
        for a in asked
        if not a["is_repeat"]
    }
    candidates = [
        (item, i, j)
        for item in items
        for i, j in itertools.combinations(range(len(method_ids)), 2)
        if (item, i, j) not in seen
    ]
    if not candidates:
        return None
    votes = db.query(
        """SELECT t.left_method, t.right_method, v.choice FROM votes v
           JOIN trials t ON t.id = v.trial JOIN raters r ON r.id = t.rater
           WHERE r.study = ?""",
        [study["id"]],
    )
    left = [position[v["left_method"]] for v in votes]
    right = [position[v["right_method"]] for v in votes]
    outcome = [{"left": 1, "right": 2}.get(v["choice"], 0) for v in votes]
    mean, cov = bt_posterior(len(method_ids), left, right, outcome)
    pair_counts: dict[tuple[int, int], int] = {}
    for a, b in zip(left, right, strict=True):
        key = (min(a, b), max(a, b))
        pair_counts[key] = pair_counts.get(key, 0) + 1
    sides: dict[int, int] = {}
    for a in asked:
        sides[position[a["left_method"]]] = sides.get(position[a["left_method"]], 0) + 1
        sides[position[a["right_method"]]] = sides.get(position[a["right_method"]], 0) - 1
    pick = choose_active_trial(
        mean,
        cov,
        candidates,
        pair_counts=pair_counts,
        side_counts=sides,
        last_item=last_item,
        rng=rng,
    )
    return PlannedTrial(pick.item, method_ids[pick.left], method_ids[pick.right]), None


def record_vote(
    db: StudyDB,
    rater_id: int,
    trial_id: int,
    choice: str,
    *,
    response_ms: int | None = None,
    client_ts: str | None = None,
    reading_ms: int | None = None,
) -> Vote:
    """Store the rater's answer to one of their trials; ``choice`` is left, right, tie or both_bad.

    Idempotent: the same vote again returns the stored one (``duplicate=True``). A different
    choice for an answered trial raises :class:`VoteConflictError`; votes are never changed.
    ``response_ms`` is the server's time from serving the screen to the answer,
    ``reading_ms`` the browser's from both images drawn to the click (None: not measured).
    """
    choice = _check_vote(choice, response_ms, client_ts)
    _check_ms(reading_ms, "reading_ms")
    trial_id = _check_id(trial_id, "trial")
    rater_id = _check_id(rater_id, "rater")
    with db.atomic() as tx:
        trial = _trial_of_rater(db, rater_id, trial_id)
        existing = db.query("SELECT choice, server_ts FROM votes WHERE trial = ?", [trial_id])
        if existing:
            if existing[0]["choice"] != choice:
                raise VoteConflictError(
                    f"trial {trial_id} was already answered {existing[0]['choice']!r}; "
                    "a vote cannot be changed. Continue with the next trial."
                )
            return Vote(trial_id, choice, existing[0]["server_ts"], duplicate=True)
        chosen = {"left": trial["left_method"], "right": trial["right_method"]}.get(choice)
        server_ts = now_iso()
        tx.execute(
            """INSERT INTO votes (trial, choice, chosen_method, response_ms, client_ts, server_ts,
                                  reading_ms)
               VALUES (?, ?, ?, ?, ?, ?, ?)""",
            [trial_id, choice, chosen, response_ms, client_ts, server_ts, reading_ms],
        )
        tx.execute("UPDATE raters SET last_seen = ? WHERE id = ?", [server_ts, rater_id])
    return Vote(trial_id, choice, server_ts)


def _check_ms(value, name: str) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RESPONSE_MS
    ):
        raise StudyError(
            f"{name} must be a whole number from 0 to {MAX_RESPONSE_MS}; got {value!r}."
        )


def _check_vote(choice, response_ms, client_ts) -> str:
    if not isinstance(choice, str) or choice not in CHOICES:
        raise StudyError(f"choice must be one of {', '.join(CHOICES)}; got {choice!r}.")
    if response_ms is not None and (
        isinstance(response_ms, bool)
        or not isinstance(response_ms, int)
        or not 0 <= response_ms <= MAX_RESPONSE_MS
    ):
        raise StudyError(
            f"response_ms must be a whole number from 0 to {MAX_RESPONSE_MS}; got {response_ms!r}."
        )
    if client_ts is not None and (
        not isinstance(client_ts, str) or len(client_ts) > 64 or not _is_utf8(client_ts)
    ):
        raise StudyError("client_ts must be a timestamp string of at most 64 characters.")
    return choice


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: SQLite cannot store it
        return False
    return True


def _check_id(value, what: str) -> int:
    """A row id as SQLite stores it; anything else (text, floats, bools, huge ints) is refused."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise NotFoundError(f"no {what} with id {value!r}; reload the page to continue.")
    return int(value)


def _trial_of_rater(db: StudyDB, rater_id: int, trial_id: int) -> dict:
    trial = db.query_one(
        """SELECT t.id, t.left_method, t.right_method, s.status, s.id AS study, r.revoked
           FROM trials t JOIN raters r ON r.id = t.rater JOIN studies s ON s.id = r.study
           WHERE t.id = ? AND t.rater = ?""",
        [trial_id, rater_id],
        missing=f"trial {trial_id} is not one of this rater's trials; reload to get your next one.",
    )
    if trial["revoked"]:
        raise RaterRevokedError(REVOKED)
    if trial["status"] != "open":
        raise StudyNotOpenError(f"study {trial['study']} is {trial['status']}; it takes no votes.")
    return trial


def progress(db: StudyDB, study_id: str) -> dict:
    """Votes so far and, per rater, trials done and planned (pseudonyms only)."""
    study = get_study(db, study_id)
    raters = db.query(
        """SELECT r.id, r.pseudonym, r.specialty, r.last_seen, r.revoked FROM raters r
           WHERE r.study = ? ORDER BY r.id""",
        [study_id],
    )
    rows = []
    for rater in raters:
        done, total = _progress_of(db, rater["id"])
        rows.append({**rater, "done": done, "total": total})
    items = db.query("SELECT count(*) AS n FROM items WHERE study = ?", [study_id])[0]["n"]
    stimuli = db.query(
        "SELECT count(*) AS n FROM stimuli s JOIN items i ON i.id = s.item WHERE i.study = ?",
        [study_id],
    )[0]["n"]
    return {
        "study": study_id,
        "title": study["title"],
        "status": study["status"],
        "design": study["settings"]["design"],
        "methods": [m["key"] for m in study["methods"]],
        "items": items,
        "stimuli": stimuli,
        "votes": sum(r["done"] for r in rows),
        "raters": rows,
    }


def rater_progress(db: StudyDB, rater_id: int) -> dict:
    """Trials done and planned for one rater."""
    done, total = _progress_of(db, rater_id)
    return {"done": done, "total": total}
