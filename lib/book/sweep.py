"""``python -m lib sweep``: run one chapter over a grid of parameters on Dask distributed.

``sweep("differentiable_dp", "smoke", {"seed": ["21", "22"]}, jobs=2)`` validates every plan
(the Cartesian product of the given values) before anything runs, then executes each plan
with the runner's :func:`~lib.book.runner.execute` on a Dask cluster: a local cluster of
``jobs`` one-thread worker processes, or an existing scheduler (``scheduler=`` or
``$DASK_SCHEDULER_ADDRESS``). Workers with more than one thread, or whose packages or git
revision differ from the client's, are refused. Each task returns its executed notebook and
run record, so workers need no shared file system; the client writes them to
``<build>/sweeps/CHAPTER/<cache key>/`` and reuses plans already there. A failed plan is
reported with its parameters and traceback and does not stop the others.

The client then aggregates ``<build>/sweeps/CHAPTER/summary.json``: per check and claim, held
k of n; per finding, mean, spread, interval across the sweep and the count of each verdict.
:func:`robustness_page` renders the latest summaries for the site.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lib.book import profiles, repro
from lib.book.paths import CHAPTERS_DIR, ROOT, build_dir, executed_dir
from lib.core import data

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"


class SweepError(RuntimeError):
    """The sweep cannot start: no usable worker, or a cluster that cannot be reached."""


def sweeps_dir() -> Path:
    """Where sweeps are written: ``<build>/sweeps``."""
    return build_dir() / "sweeps"


# ---------------------------------------------------------------- plans


def parse_values(pairs: list[tuple[str, str]] | None) -> dict[str, list[str]]:
    """``[("seed", "1,2"), ("lr", "0.1")]`` -> ``{"seed": ["1", "2"], "lr": ["0.1"]}``."""
    grid: dict[str, list[str]] = {}
    for name, text in pairs or []:
        values = [v.strip() for v in str(text).split(",") if v.strip()]
        if not values:
            raise profiles.ParameterError(f"-p {name}: give one or more values, comma-separated")
        grid.setdefault(name, []).extend(values)
    return grid


def plans(chapter: profiles.Chapter, profile: str, grid: dict[str, list[str]]) -> list[dict]:
    """Resolved parameters of every plan of the grid (each checked; an error names the plan)."""
    names = list(grid)
    out, seen = [], set()
    for combo in itertools.product(*(grid[n] for n in names)):
        chosen = dict(zip(names, combo))
        try:
            params = profiles.resolve(chapter, profile, chosen)
        except profiles.ParameterError as exc:
            raise profiles.ParameterError(f"plan {chosen}: {exc.args[0]}") from None
        key = json.dumps(params, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(params)
    return out


# ---------------------------------------------------------------- on the workers


def identity() -> dict[str, Any]:
    """What a worker must share with the client: packages and git revision."""
    return {"versions": repro.all_versions(), "git_revision": repro.git_revision()}


def _notebook_ref(chapter: profiles.Chapter) -> str:
    """The notebook's path as a worker finds it: relative to its checkout when possible."""
    try:
        return str(chapter.notebook.resolve().relative_to(ROOT))
    except ValueError:
        return str(chapter.notebook)


def run_plan(notebook: str, params: dict[str, Any], client_key: str) -> dict[str, Any]:
    """Execute one plan on this worker into a private build folder; return the executed
    notebook (text), the run record, or the failure with its traceback. Runs in a worker with
    one thread, so setting the build folder in the environment is private to this task."""
    from lib.book import runner

    nb_path = Path(notebook) if Path(notebook).is_absolute() else ROOT / notebook
    tmp = Path(tempfile.mkdtemp(prefix="repro-sweep-"))
    previous = os.environ.get("REPRO_BUILD_DIR")
    os.environ["REPRO_BUILD_DIR"] = str(tmp)
    result: dict[str, Any] = {"notebook": None, "record": None, "error": "", "host": os.uname()[1]}
    try:
        chapter = profiles.load_chapter(nb_path)
        outcome = runner.execute(chapter, params, use_cache=False, progress=False)
        result["status"], result["wall_s"] = outcome.status, outcome.wall_s
        if outcome.status == "failed":
            result["error"] = outcome.error
            failed = tmp / "failed" / f"{chapter.name}.ipynb"
            if failed.exists():
                result["notebook"] = failed.read_text(encoding="utf-8")
        else:
            result["record"] = outcome.record
            executed = executed_dir(params["profile"]) / f"{chapter.name}.ipynb"
            result["notebook"] = executed.read_text(encoding="utf-8")
            if outcome.record.get("cache_key") != client_key:  # kept, but not reused later
                result["note"] = (
                    f"the worker's cache key {outcome.record.get('cache_key')} differs from the "
                    f"client's {client_key}: its lib source, data or packages differ (edited "
                    "during the sweep?); the run is kept and will not be reused"
                )
    except Exception as exc:  # a broken spec, a missing data file on this worker
        import traceback

        result["status"], result["wall_s"] = "failed", 0.0
        result["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    finally:
        if previous is None:
            os.environ.pop("REPRO_BUILD_DIR", None)
        else:
            os.environ["REPRO_BUILD_DIR"] = previous
        shutil.rmtree(tmp, ignore_errors=True)
    return result


# ---------------------------------------------------------------- the client


def accepted_workers(client, out=sys.stderr) -> list[str]:
    """Addresses of the workers that may run plans: one thread, the client's packages and git
    revision. Each refused worker is printed with the reason."""
    mine = identity()
    workers = client.scheduler_info(n_workers=-1)["workers"]
    theirs = client.run(identity)
    ok = []
    for addr, info in sorted(workers.items()):
        reasons = []
        if info.get("nthreads") != 1:
            reasons.append(f"{info.get('nthreads')} threads (one per worker keeps runs repeatable)")
        other = theirs.get(addr)
        if other is None:
            reasons.append("did not answer")
        else:
            if other["git_revision"] != mine["git_revision"]:
                reasons.append(
                    f"git revision {other['git_revision']} (client: {mine['git_revision']})"
                )
            diff = sorted(set(other["versions"]) ^ set(mine["versions"]))
            if diff:
                reasons.append(f"packages differ: {', '.join(diff[:6])}{' ...' * (len(diff) > 6)}")
        if reasons:
            print(f"refusing worker {addr}: {'; '.join(reasons)}", file=out)
        else:
            ok.append(addr)
    return ok


def _write_plan(folder: Path, name: str, result: dict[str, Any]) -> None:
    from lib.book.runner import write_atomic

    if result["status"] == "ok":
        write_atomic(folder / f"{name}.ipynb", result["notebook"])
        write_atomic(folder / f"{name}.json", json.dumps(result["record"], indent=2, default=str))
        for stale in ("failed.ipynb", "error.txt"):
            (folder / stale).unlink(missing_ok=True)
    else:  # a re-run that failed must not leave an earlier result to be reused
        for stale in (f"{name}.ipynb", f"{name}.json"):
            (folder / stale).unlink(missing_ok=True)
        if result.get("notebook"):
            write_atomic(folder / "failed.ipynb", result["notebook"])
        write_atomic(folder / "error.txt", result["error"])


def _cached(folder: Path, name: str, key: str) -> dict[str, Any] | None:
    rec_file, nb_file = folder / f"{name}.json", folder / f"{name}.ipynb"
    if not (rec_file.exists() and nb_file.exists()):
        return None
    record = json.loads(rec_file.read_text())
    if record.get("status") == "ok" and record.get("cache_key") == key:
        return record
    return None


def _client(jobs: int, scheduler: str | None):
    """A Dask client: on the scheduler at ``scheduler`` (or ``$DASK_SCHEDULER_ADDRESS``), else
    on a new local cluster of ``jobs`` worker processes with one thread each."""
    import logging

    from distributed import Client, LocalCluster

    address = scheduler or os.environ.get(SCHEDULER_ENV)
    if address:
        client = Client(address, timeout="30s")
        client.wait_for_workers(1, timeout=60)
        return client, None
    cluster = LocalCluster(
        n_workers=jobs,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        memory_limit=0,  # the kernels, not the workers, hold the memory
        silence_logs=logging.ERROR,
    )
    return Client(cluster), cluster


def sweep(
    name: str,
    profile: str,
    grid: dict[str, list[str]],
    *,
    jobs: int = 2,
    scheduler: str | None = None,
    use_cache: bool = True,
    directory: Path = CHAPTERS_DIR,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every plan of the grid (cached ones reused), write each under
    ``<build>/sweeps/NAME/<cache key>/`` and the summary; return the summary. Failures are
    in ``summary["failed"]`` with parameters and traceback."""
    from tqdm.auto import tqdm

    from lib.book import runner

    chapter = profiles.get(name, directory)
    all_plans = plans(chapter, profile, grid)  # raises before anything runs
    for dataset_name in chapter.data:  # missing data is reported before anything runs
        data.require(dataset_name)
    keys = [runner.cache_key(chapter, p) for p in all_plans]
    root = sweeps_dir() / chapter.name
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for params, key in zip(all_plans, keys):
        record = _cached(root / key, chapter.name, key) if use_cache else None
        if record is not None:
            results[key] = {"status": "cached", "record": record, "params": params}
        else:
            todo.append((params, key))
    bar = tqdm(
        total=len(all_plans),
        initial=len(results),
        desc=f"sweep {chapter.name}",
        unit="run",
        disable=not progress,
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    if todo:
        from distributed import as_completed

        client, cluster = _client(jobs, scheduler)
        try:
            workers = accepted_workers(client)
            if not workers:
                raise SweepError("no worker can run the sweep (see the reasons above)")
            ref = _notebook_ref(chapter)
            futures = {}
            for params, key in todo:
                fut = client.submit(
                    run_plan,
                    ref,
                    params,
                    key,
                    key=f"{chapter.name}-{key}-{time.time_ns()}",
                    pure=False,
                    workers=workers,
                    allow_other_workers=False,
                    retries=0,
                )
                futures[fut] = (params, key)
            for fut in as_completed(futures):
                params, key = futures[fut]
                try:
                    result = fut.result()
                except Exception as exc:  # the worker died (e.g. out of memory)
                    result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                result["params"] = params
                _write_plan(root / key, chapter.name, result)
                results[key] = result
                bar.update(1)
                if result["status"] != "ok":
                    bar.write(f"plan {_shown(params, grid)} failed (see the end)", file=sys.stderr)
                elif result.get("note"):
                    bar.write(f"plan {_shown(params, grid)}: {result['note']}", file=sys.stderr)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    bar.close()
    runs = [results[k] for k in keys]
    summary = summarise(chapter, profile, grid, runs, keys)
    summary["wall_s"] = round(time.perf_counter() - t0, 2)
    runner.write_atomic(root / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def _shown(params: dict[str, Any], grid: dict[str, list[str]]) -> str:
    return ", ".join(f"{k}={params[k]}" for k in grid) or "defaults"


# ---------------------------------------------------------------- aggregation


def summarise(
    chapter: profiles.Chapter,
    profile: str,
    grid: dict[str, list[str]],
    results: list[dict[str, Any]],
    keys: list[str],
) -> dict[str, Any]:
    """Aggregate the records of the successful runs: per check, claim and adequacy entry how
    many runs it held in; per finding mean, spread, 95 % t interval across runs and the
    count of each verdict."""
    from lib.book import stats

    ok = [r["record"] for r in results if r["status"] in ("ok", "cached")]
    failed = [
        {"parameters": r["params"], "cache_key": k, "error": r.get("error", "")}
        for r, k in zip(results, keys)
        if r["status"] not in ("ok", "cached")
    ]
    held: dict[str, dict[str, Any]] = {}
    for rec in ok:
        for entry in list(rec.get("claims") or []) + list(rec.get("adequacy") or []):
            row = held.setdefault(
                entry["name"],
                {"name": entry["name"], "kind": entry.get("kind", "claim"), "held": 0, "n": 0},
            )
            row["n"] += 1
            row["held"] += bool(entry.get("holds"))
    findings: dict[str, dict[str, Any]] = {}
    for rec in ok:
        for entry in rec.get("findings") or []:
            row = findings.setdefault(
                entry["name"],
                {"name": entry["name"], "paper_value": entry.get("paper_value"), "values": [],
                 "verdicts": {}},
            )  # fmt: skip
            if isinstance(entry.get("value"), (int, float)):
                row["values"].append(float(entry["value"]))
            verdict = entry.get("verdict") or "none"
            row["verdicts"][verdict] = row["verdicts"].get(verdict, 0) + 1
    for row in findings.values():
        values = row.pop("values")
        row["n"] = len(values)
        if values:
            spread = stats.seed_spread(values)
            est = stats.t_interval(values)
            row.update(
                mean=spread["mean"],
                sd=spread["sd"],
                min=spread["min"],
                max=spread["max"],
                ci=list(est.ci) if est.ci else None,
            )
    return {
        "chapter": chapter.name,
        "title": chapter.title,
        "profile": profile,
        "swept": grid,
        "runs": len(ok),
        "plans": [
            {"parameters": r["params"], "cache_key": k, "status": r["status"]}
            for r, k in zip(results, keys)
        ],
        "failed": failed,
        "checks": [r for r in held.values() if r["kind"] != "claim" and r["kind"] != "adequacy"],
        "claims": [r for r in held.values() if r["kind"] == "claim"],
        "adequacy": [r for r in held.values() if r["kind"] == "adequacy"],
        "findings": list(findings.values()),
        "git_revision": repro.git_revision(),
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def report(summary: dict[str, Any], out=sys.stdout) -> int:
    """Print the failures in full and the summary in short; return the exit code."""
    for f in summary["failed"]:
        shown = ", ".join(f"{k}={v}" for k, v in f["parameters"].items())
        print(f"\n=== plan failed: {shown}\n{f['error']}", file=sys.stderr)
    n_plans = len(summary["plans"])
    print(
        f"\n{summary['chapter']} ({summary['profile']}): {summary['runs']} of {n_plans} runs ok, "
        f"{len(summary['failed'])} failed, {summary['wall_s']:.1f} s",
        file=out,
    )
    for row in summary["checks"] + summary["claims"] + summary["adequacy"]:
        print(f"  {row['kind']:9} {row['name']:40} held {row['held']} of {row['n']}", file=out)
    for row in summary["findings"]:
        verdicts = ", ".join(f"{n} {v}" for v, n in row["verdicts"].items())
        mean = f"{row['mean']:.4g} ± {row['sd']:.2g}" if row.get("n") else "no value"
        print(f"  finding   {row['name']:40} {mean}  ({verdicts})", file=out)
    print(f"summary: {sweeps_dir() / summary['chapter'] / 'summary.json'}", file=out)
    bad_claims = [r for r in summary["checks"] + summary["claims"] if r["held"] < r["n"]]
    return 1 if summary["failed"] or bad_claims else 0


# ---------------------------------------------------------------- the site's page


def _num(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x).replace("|", "\\|")  # a table cell


def robustness_page() -> str:
    """Markdown of the site's Robustness page: the latest sweep of each chapter (profile,
    swept values, k of n per check and claim, findings across runs), or a plain statement
    that a chapter has none."""
    from lib.book.site import toc_chapters

    names = [profiles.chapter_name(Path(e).name) for e in toc_chapters()]
    lines = [
        "# Robustness",
        "",
        "How the chapters' records hold up across seeds and parameters: the latest sweep of "
        "each chapter (`python -m lib sweep CHAPTER -p seed 1,2,3,...`), read from "
        "`_build/sweeps/CHAPTER/summary.json`. A check or claim shows the number of runs it "
        "held in; a finding shows its mean, standard deviation and 95 % t interval across the "
        "runs, and how often each verdict came out.",
        "",
    ]
    for name in names:
        file = sweeps_dir() / name / "summary.json"
        lines += [f"## {name}", ""]
        if not file.exists():
            lines += [
                f"No sweep of this chapter has been run yet: its verdicts rest on the "
                f"single run shown on its page. Run `python -m lib sweep {name} "
                f"-p seed 1,2,3,4,5` to add one.",
                "",
            ]
            continue
        s = json.loads(file.read_text())
        swept = "; ".join(f"`{k}` = {', '.join(map(str, v))}" for k, v in s["swept"].items())
        failed = f", {len(s['failed'])} failed" if s["failed"] else ""
        lines += [
            f"Profile `{s['profile']}`, {swept or 'defaults'}: {s['runs']} runs{failed} "
            f"(git revision `{s['git_revision']}`, {s['generated_at']}).",
            "",
        ]
        rows = s["checks"] + s["claims"] + s.get("adequacy", [])
        if rows:
            lines += ["| kind | name | held |", "|---|---|---|"]
            lines += [f"| {r['kind']} | `{r['name']}` | {r['held']} of {r['n']} |" for r in rows]
            lines.append("")
        if s["findings"]:
            lines += [
                "| finding | paper | mean | sd | 95 % interval | verdicts |",
                "|---|---|---|---|---|---|",
            ]
            for r in s["findings"]:
                ci = r.get("ci")
                interval = f"[{_num(ci[0])}, {_num(ci[1])}]" if ci else "-"
                verdicts = ", ".join(f"{v}: {n}" for v, n in r["verdicts"].items())
                lines.append(
                    f"| `{r['name']}` | {_num(r.get('paper_value'))} | {_num(r.get('mean'))} | "
                    f"{_num(r.get('sd'))} | {interval} | {verdicts} |"
                )
            lines.append("")
        if not rows and not s["findings"]:
            lines += ["The runs recorded no checks, claims or findings.", ""]
    return "\n".join(lines)
