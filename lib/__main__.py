"""Command line: ``python -m lib run|build|list`` (see README)."""

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

    return site.build()


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
    run.add_argument("--jobs", "-j", type=int, default=1, help="chapters run in parallel")
    run.add_argument("--no-cache", action="store_true", help="re-execute even if cached")
    run.set_defaults(func=_cmd_run)

    build = sub.add_parser("build", help="render the executed chapters as HTML (Jupyter Book v1)")
    build.set_defaults(func=_cmd_build)

    lst = sub.add_parser("list", help="list chapters, their parameters and profiles")
    lst.set_defaults(func=_cmd_list)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
