"""``python -m lib data list|fetch|verify``: get and check the book's external files.

The registry is :mod:`lib.core.data`. ``fetch`` downloads each missing or damaged file of the
data directory with pooch, to a temporary file beside its destination that is renamed into
place only once its sha256 matches (so an interrupted or corrupted download never leaves a
file that verifies, and a good file is never touched), then prints the licences. Packaged
data cannot be downloaded here: ``fetch`` and ``verify`` name the command that installs it.

This is the only module of the book that touches the network, and only when asked:
``lib run`` never imports it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from lib.core import data

TIMEOUT_S = 60  # per connection attempt of one download


@dataclass
class State:
    """One registered file and what was found."""

    file: data.DataFile
    state: str  # ok | missing | wrong size | wrong sha256


def states(names: list[str] | None = None) -> list[State]:
    """The state of every registered file of the named data sets (default: all)."""
    return [State(f, data.file_state(f)) for f in data.all_files(names)]


def _mb(n: int) -> str:
    return f"{n / 1e6:8.2f} MB"


def list_files(names: list[str] | None = None, out=sys.stdout) -> int:
    """Print every registered file with its size, sha256, licence, address and state."""
    for name in names or list(data.REGISTRY):
        d = data.dataset(name)
        where = f"package: {d.install}" if d.packaged else f"data directory: {data.data_dir()}"
        print(f"{name}: {d.title}\n  licence: {d.licence}\n  {where}", file=out)
        for s in states([name]):
            f = s.file
            print(f"  {s.state:12} {f.name:42} {_mb(f.size)}  sha256 {f.sha256[:16]}…", file=out)
            if f.url:
                print(f"               {f.url}", file=out)
        print(file=out)
    return 0


def _install_hints(bad: list[State]) -> list[str]:
    hints = {}
    for s in bad:
        d = data.dataset(s.file.dataset)
        hints[d.name] = f"  {d.name}: install it with `{d.install}` ({d.root()})"
    return list(hints.values())


def verify(names: list[str] | None = None, out=sys.stdout) -> int:
    """Check every registered file (size and sha256); 0 when all are there and intact."""
    found = states(names)
    bad = [s for s in found if s.state != "ok"]
    for s in bad:
        print(f"{s.state:12} {data.local_path(s.file)}", file=out)
    ok = len(found) - len(bad)
    print(
        f"{ok} of {len(found)} registered files verify (data directory {data.data_dir()})", file=out
    )
    remote = [s for s in bad if s.file.url]
    if remote:
        print("get the missing or damaged ones with: python -m lib data fetch", file=out)
    if len(remote) < len(bad):
        print("packaged data that is missing or differs:", file=out)
        print("\n".join(_install_hints([s for s in bad if not s.file.url])), file=out)
    return 0 if not bad else 1


def fetch(
    names: list[str] | None = None,
    base_url: str | None = None,
    progress: bool | None = None,
    out=sys.stdout,
) -> int:
    """Download every missing or damaged file of the data directory, verify it, and print the
    licences; 0 when every registered file is then present and intact.

    ``base_url`` (or ``$REPRO_DATA_URL``) replaces every file's address by the same path under
    that address (a mirror of the data directory's layout)."""
    import pooch

    pooch.get_logger().setLevel("WARNING")  # each download is announced below
    found = states(names)
    todo = [s for s in found if s.state != "ok" and s.file.url]
    packaged_bad = [s for s in found if s.state != "ok" and not s.file.url]
    failed: list[tuple[data.DataFile, str, str]] = []
    if progress is None:
        progress = out.isatty() if hasattr(out, "isatty") else False
    total = sum(s.file.size for s in todo)
    if todo:
        print(f"fetching {len(todo)} files ({total / 1e6:.1f} MB) into {data.data_dir()}", file=out)
    for s in todo:
        f = s.file
        dest = data.local_path(f)
        url = data.address(f, base_url)
        print(f"  {f.relpath} ({s.state}) <- {url}", file=out, flush=True)
        try:
            pooch.retrieve(
                url,
                known_hash=f"sha256:{f.sha256}",
                fname=dest.name,
                path=dest.parent,
                downloader=pooch.HTTPDownloader(progressbar=progress, timeout=TIMEOUT_S),
            )
        except Exception as exc:  # connection refused, DNS, HTTP error, hash mismatch
            failed.append((f, url, f"{type(exc).__name__}: {exc}".splitlines()[0][:200]))
            continue
        if data.file_state(f) != "ok":  # pooch checked the hash; check the size too
            failed.append((f, url, "the downloaded file does not verify"))
    if failed:
        print(f"\nerror: {len(failed)} file(s) could not be fetched:", file=out)
        for f, url, why in failed:
            print(
                f"  {f.relpath}\n    from   {url}\n    put in {data.local_path(f).parent}/",
                file=out,
            )
            print(f"    ({why})", file=out)
        print(
            "Download each into the folder shown (or point $REPRO_DATA at a directory that has "
            "them), then run `python -m lib data verify`.",
            file=out,
        )
    if packaged_bad:
        print("\nerror: packaged data is missing or differs:", file=out)
        print("\n".join(_install_hints(packaged_bad)), file=out)
    done = len(found) - len(failed) - len(packaged_bad)
    print(f"\n{done} of {len(found)} registered files present and verified.", file=out)
    print_licences(names, out=out)
    return 1 if failed or packaged_bad else 0


def print_licences(names: list[str] | None = None, out=sys.stdout) -> None:
    """The licence of each data set, and per licence how many of its files."""
    print("Licences of the data (attribute the creators when you share it):", file=out)
    for name in names or list(data.REGISTRY):
        d = data.dataset(name)
        counts: dict[str, int] = {}
        for f in d.files:
            counts[f.licence] = counts.get(f.licence, 0) + 1
        per_file = "; ".join(f"{lic}: {n} file{'s' * (n > 1)}" for lic, n in counts.items())
        print(f"  {name}: {d.licence}" + (f" ({per_file})" if len(counts) > 1 else ""), file=out)
