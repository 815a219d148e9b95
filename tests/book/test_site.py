"""The site built from the smoke runs, opened in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest
import yaml
from conftest import toc_names

from lib.book.paths import BOOK_DIR, ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test log readable
        pass


@pytest.fixture(scope="module")
def server(smoke_site: Path):
    handler = functools.partial(QuietHandler, directory=str(smoke_site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def visit(browser, url: str):
    """Open a page; return it with the console errors and failed requests seen while loading."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on(
        "requestfailed", lambda r: errors.append(f"failed request {r.url}")
    )  # the site is self-contained
    response = page.goto(url, wait_until="load")
    assert response is not None and response.ok, f"{url}: HTTP {response and response.status}"
    page.wait_for_timeout(300)
    return page, errors


def chapter_pages() -> list[str]:
    pages = ["book/intro.html", "book/status.html"]
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    for part in toc["parts"]:
        for entry in part.get("chapters") or []:
            if entry["file"].startswith("book/chapters/"):
                pages.append(entry["file"] + ".html")
    return pages


def test_intro_page_lists_every_paper_and_has_no_placeholder(browser, server):
    page, errors = visit(browser, server + "book/intro.html")
    text = page.inner_text("body")
    papers = yaml.safe_load((BOOK_DIR / "papers.yml").read_text())
    for p in papers["seed_list_a"] + papers["seed_list_b"]:
        assert p["ref"] in text, f"intro lacks {p['title']}"
    for word in ("TODO", "TBD", "placeholder", "lorem"):
        assert word.lower() not in text.lower()
    assert not errors, errors
    page.set_viewport_size({"width": 1280, "height": 1600})
    page.screenshot(path=str(ROOT / "_build" / "intro.png"), full_page=False)
    assert (ROOT / "_build" / "intro.png").stat().st_size > 10_000


@pytest.mark.parametrize("path", chapter_pages())
def test_page_loads_images_and_links(browser, server, path):
    page, errors = visit(browser, server + path)
    sizes = page.eval_on_selector_all(
        "article img",
        "els => els.map(e => [e.getAttribute('src'), e.naturalWidth, e.naturalHeight])",
    )
    for src, w, h in sizes:
        assert w > 0 and h > 0, f"{path}: image {src} has no size"
    if path.startswith("book/chapters/"):
        assert sizes, f"{path} shows no figure"
        assert "holds" in page.inner_text("article"), f"{path}: no claims table"
        headers = page.eval_on_selector_all("article table th", "els => els.map(e => e.innerText)")
        assert "verdict" in headers and "criterion" in headers, \
            f"{path}: the records tables did not render as tables"
    hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
    for href in set(hrefs):
        url = urljoin(server + path, href)
        if urlparse(url).hostname != "127.0.0.1" or href.startswith("#"):
            continue
        target = url.split("#")[0]
        status = page.request.get(target).status
        assert status == 200, f"{path}: link {href} -> HTTP {status}"
        if "#" in url and target.endswith(".html") and urlparse(url).fragment:
            anchor = urlparse(url).fragment
            html = page.request.get(target).text()
            assert f'id="{anchor}"' in html, f"{path}: link {href} points to a missing anchor"
    assert not errors, f"{path}: {errors}"


def test_status_page_lists_every_chapter(browser, server):
    page, _ = visit(browser, server + "book/status.html")
    text = page.inner_text("article")
    for name in toc_names():
        assert name in text


def test_search_finds_a_word_of_the_book(browser, server):
    page, errors = visit(browser, server + "search.html?q=reproducibility")
    page.wait_for_selector("#search-results ul.search li", timeout=15_000)
    assert page.locator("#search-results ul.search li").count() > 0
    assert not errors, errors
