"""Command line: ``python -m lib run|build|list|sweep|data`` (see README)."""

from __future__ import annotations

import argparse
import sys

from lib.book import profiles


def _cmd_list(args: argparse.Namespace) -> int:
    for chapter in profiles.chapters().values():
        print(f"{chapter.name}  ({chapter.notebook.name}): {chapter.title}")
        print(chapter.describe())
        for profile in profiles.PROFILES:
            changed = chapter.profiles.get(profile) or {}
            shown = ", ".join(f"{k}={v}" for k, v in changed.items()) or "defaults"
            print(f"  profile {profile}: {shown}")
        print()
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from lib.book import runner

    overrides = {}
    for name, value in args.param or []:
        overrides[name] = value
    try:
        outcomes = runner.run_chapters(
            args.chapters, args.profile, overrides, jobs=args.jobs, use_cache=not args.no_cache
        )
    except (profiles.ParameterError, KeyError, FileNotFoundError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    return runner.report(outcomes)


def _cmd_build(args: argparse.Namespace) -> int:
    from lib.book import site

    return site.build(args.profile)


def _cmd_data(args: argparse.Namespace) -> int:
    from lib.book import fetch  # the only module that may touch the network

    try:
        if args.action == "list":
            return fetch.list_files(args.datasets)
        if args.action == "verify":
            return fetch.verify(args.datasets)
        return fetch.fetch(args.datasets, base_url=args.base_url)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2


def _cmd_sweep(args: argparse.Namespace) -> int:
    from lib.book import sweep
    from lib.core.data import DataMissing

    try:
        grid = sweep.parse_values(args.param)
        summary = sweep.sweep(
            args.chapter,
            args.profile,
            grid,
            jobs=args.jobs,
            scheduler=args.scheduler,
            use_cache=not args.no_cache,
        )
    except (profiles.ParameterError, KeyError, DataMissing, sweep.SweepError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    return sweep.report(summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute chapters with papermill (cached by content)")
    run.add_argument("chapters", nargs="*", help="chapter names (default: all)")
    run.add_argument("--profile", default=profiles.DEFAULT_PROFILE, choices=profiles.PROFILES)
    run.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="override a parameter (repeatable)",
    )
    run.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=1,
        help="chapters run in parallel, the longest first (by their last wall times)",
    )
    run.add_argument("--no-cache", action="store_true", help="re-execute even if cached")
    run.set_defaults(func=_cmd_run)

    build = sub.add_parser("build", help="render the executed chapters as HTML (Jupyter Book v1)")
    build.add_argument(
        "--profile",
        default="book",
        help="render the runs of this profile (default book; the tests render smoke)",
    )
    build.set_defaults(func=_cmd_build)

    lst = sub.add_parser("list", help="list chapters, their parameters and profiles")
    lst.set_defaults(func=_cmd_list)

    sw = sub.add_parser(
        "sweep",
        help="run one chapter over a grid of parameter values on Dask distributed",
        description="Run the Cartesian product of the given values (every plan checked first) "
        "on a local Dask cluster of one-thread workers, or on an existing scheduler. Results: "
        "_build/sweeps/CHAPTER/<cache key>/ and _build/sweeps/CHAPTER/summary.json.",
    )
    sw.add_argument("chapter", help="chapter name")
    sw.add_argument("--profile", default=profiles.DEFAULT_PROFILE, choices=profiles.PROFILES)
    sw.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        metavar=("NAME", "V1,V2,..."),
        help="values of a parameter, comma-separated (repeatable; the grid is their product)",
    )
    where = sw.add_mutually_exclusive_group()
    where.add_argument(
        "--jobs", "-j", type=int, default=2, help="worker processes of the local cluster"
    )
    where.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="address of an existing Dask scheduler (default: $DASK_SCHEDULER_ADDRESS, "
        "else a local cluster)",
    )
    sw.add_argument("--no-cache", action="store_true", help="re-run plans already swept")
    sw.set_defaults(func=_cmd_sweep)

    dat = sub.add_parser(
        "data",
        help="list, fetch or verify the external data files (the only command that downloads)",
    )
    dat.add_argument("action", choices=("list", "fetch", "verify"))
    dat.add_argument("datasets", nargs="*", help="data set names (default: all)")
    dat.add_argument(
        "--base-url",
        default=None,
        metavar="URL",
        help="fetch every file from this mirror of the data directory's layout instead of its "
        "own address (also $REPRO_DATA_URL)",
    )
    dat.set_defaults(func=_cmd_data)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
