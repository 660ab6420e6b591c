"""Command line for studies: create, invite, status, export, report.

    python -m study create --title T --images DIR --methods dpe,lime [--degrade paper --seed N]
    python -m study invite STUDY --name N [--specialty S]
    python -m study revoke STUDY RATER
    python -m study status [STUDY]
    python -m study close STUDY / python -m study reopen STUDY
    python -m study export STUDY --out DIR
    python -m study report STUDY

The database is ``$DPE_DATA_DIR/study.db`` (default ./data/study). ``create`` prints the new
study's id and ``invite`` the invite code as their last line, so scripts can capture them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from study.analysis import N_BOOTSTRAP, analyse_study, format_report
from study.create import close_study, list_studies, reopen_study
from study.db import StudyDB, StudyError, open_db
from study.design import DESIGNS
from study.export import export_study
from study.trials import invite_rater, progress, revoke_rater


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (2 for an error the user can fix)."""
    args = _parser().parse_args(argv)
    try:
        with open_db() as db:
            return args.run(db, args) or 0
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    create = commands.add_parser("create", help="enhance images with each method, open a study")
    create.add_argument("--title", required=True)
    create.add_argument(
        "--images",
        required=True,
        help="folder of images; subfolders = modality; fitted to DPE_MAX_MEGAPIXELS",
    )
    create.add_argument("--methods", required=True, help="comma-separated method keys")
    create.add_argument("--instructions", default="", help="shown to raters")
    create.add_argument(
        "--degrade", metavar="PRESET", help="degrade clean images first (paper or clinical)"
    )
    create.add_argument("--seed", type=int, default=0, help="seed for --degrade")
    create.add_argument("--design", choices=DESIGNS, default="balanced")
    create.add_argument("--repeat-fraction", type=float, default=0.1)
    create.add_argument("--resume", metavar="STUDY", help="finish an interrupted create")
    create.set_defaults(run=_create)

    invite = commands.add_parser("invite", help="add a rater; prints the invite code once")
    invite.add_argument("study")
    invite.add_argument("--name", required=True)
    invite.add_argument("--specialty", default="")
    invite.add_argument("--years", type=int, help="years of experience")
    invite.set_defaults(run=_invite)

    revoke = commands.add_parser("revoke", help="withdraw a rater's invite code (votes stay)")
    revoke.add_argument("study")
    revoke.add_argument("rater", help="the rater's pseudonym, e.g. R03 (see `status`)")
    revoke.set_defaults(run=_revoke)

    for name, run, help_text in [
        ("close", _close, "stop a study taking votes (undo with `reopen`)"),
        ("reopen", _reopen, "take votes again for a closed study"),
    ]:
        command = commands.add_parser(name, help=help_text)
        command.add_argument("study")
        command.set_defaults(run=run)

    status = commands.add_parser("status", help="progress of a study (or list all studies)")
    status.add_argument("study", nargs="?")
    status.set_defaults(run=_status)

    export = commands.add_parser("export", help="write CSVs, report.json and a snapshot")
    export.add_argument("study")
    export.add_argument("--out", required=True)
    export.add_argument("--bootstrap", type=int, default=N_BOOTSTRAP, help="rater resamples")
    export.set_defaults(run=_export)

    report = commands.add_parser("report", help="print a readable summary")
    report.add_argument("study")
    report.add_argument("--bootstrap", type=int, default=N_BOOTSTRAP, help="rater resamples")
    report.set_defaults(run=_report)
    return parser


def _create(db: StudyDB, args) -> None:
    from study import bridge  # imports dpe (and torch): only this command needs it

    def created(study_id: str) -> None:
        print(f"study {study_id}: if interrupted, rerun with --resume {study_id}", file=sys.stderr)

    study_id = bridge.create_study(
        db,
        args.title,
        bridge.find_images(args.images),
        [m.strip() for m in args.methods.split(",") if m.strip()],
        degrade=args.degrade,
        seed=args.seed,
        resume=args.resume,
        instructions=args.instructions,
        design=args.design,
        repeat_fraction=args.repeat_fraction,
        progress=_progress_bar(),
        on_created=created,
    )
    print(study_id)


def _progress_bar():
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, initial=done, unit="stimulus", file=sys.stderr)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def _invite(db: StudyDB, args) -> None:
    invite = invite_rater(
        db, args.study, args.name, specialty=args.specialty, years_experience=args.years
    )
    print(f"rater {invite.pseudonym} invited to study {args.study}; the code is shown only once:")
    print(invite.code)


def _revoke(db: StudyDB, args) -> None:
    rater = revoke_rater(db, args.study, args.rater)
    print(
        f"rater {rater['pseudonym']}'s invite code is withdrawn (since {rater['revoked']}); "
        f"their {rater['votes']} votes stay in study {args.study}."
    )


def _close(db: StudyDB, args) -> None:
    close_study(db, args.study)
    print(f"study {args.study} is closed; reopen it with `python -m study reopen {args.study}`.")


def _reopen(db: StudyDB, args) -> None:
    reopen_study(db, args.study)
    print(f"study {args.study} is open again; raters continue where they stopped.")


def _status(db: StudyDB, args) -> None:
    if args.study is None:
        studies = list_studies(db)
        for s in studies:
            print(f"{s['id']}  {s['status']:<8}  {s['created'][:10]}  {s['title']}")
        if not studies:
            print("no studies yet; create one with `python -m study create`.")
        return
    p = progress(db, args.study)
    print(f"Study {p['study']}: {p['title']}")
    print(f"  status {p['status']}, design {p['design']}, methods {', '.join(p['methods'])}")
    print(f"  {p['items']} images, {p['stimuli']} stimuli, {p['votes']} votes")
    for r in p["raters"]:
        specialty = r["specialty"] or "-"
        seen = r["last_seen"] or "never"
        revoked = f"  code withdrawn {r['revoked']}" if r["revoked"] else ""
        line = f"  {r['pseudonym']:<5} {specialty:<16} {r['done']:>5}/{r['total']:<5} seen {seen}"
        print(line + revoked)
    if not p["raters"]:
        print(f"  no raters yet; invite one with `python -m study invite {p['study']} --name N`.")


def _export(db: StudyDB, args) -> None:
    written = export_study(db, args.study, args.out, n_boot=args.bootstrap)
    for name, path in written.items():
        print(f"{name:<9} {path}")


def _report(db: StudyDB, args) -> None:
    print(format_report(analyse_study(db, args.study, n_boot=args.bootstrap)))


if __name__ == "__main__":
    sys.exit(main())
