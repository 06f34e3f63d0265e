"""The report site checked as a person would read it (issue 19): headless Chromium visits every page.

From the index, every page reachable by a link is opened from disk (``file://``, no server); a page fails
on a console error, an uncaught script error, a request that fails (a missing image, style sheet or
script), an image that did not decode, or a link to a local file that does not exist. Chromium is the
system's (Debian's ``chromium``; ``GRAMLIB_CHROMIUM`` names another), driven by Playwright through
``executable_path``: no browser is downloaded.

CLI (also how the README's screenshot is made)::

    python -m gramlib.reporting.site_check reports/site \\
        --screenshot notebooks/10_table1_base_to_new=docs/screenshots/site_table1.png
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The system's Chromium: ``GRAMLIB_CHROMIUM``, else the first of CHROMIUM_NAMES on the PATH."""
    named = os.environ.get("GRAMLIB_CHROMIUM")
    if named:
        return named if Path(named).exists() else None
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


@dataclass
class SiteReport:
    """What the visit found; ``problems`` empty means every page loaded cleanly."""

    pages: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    screenshots: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _local(url: str) -> Path | None:
    parsed = urlparse(url)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


_IMAGES_JS = "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"
_FIRST_TABLE_JS = ("() => { const t = document.querySelector('main table, .body table, table');"
                   " if (t) { (t.closest('.cell') || t).scrollIntoView(); } }")
_LINKS_JS = "Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"


def check_site(site: str | os.PathLike, screenshots: Mapping[str, str | os.PathLike] | None = None,
               chromium: str | None = None, timeout_ms: int = 30_000) -> SiteReport:
    """Visit every page of the site under ``site`` reachable from its ``index.html``.

    ``screenshots`` maps a page (path below ``site`` without ``.html``, e.g. ``index`` or
    ``notebooks/10_table1_base_to_new``) to a PNG file to write (full page).
    """
    from playwright.sync_api import sync_playwright

    root = Path(site).resolve()
    index = root / "index.html"
    if not index.exists():
        raise FileNotFoundError(f"{index}: no report site (build it: python -m gramlib.reporting.site)")
    exe = chromium or find_chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium, or set GRAMLIB_CHROMIUM)")
    wanted = {k: Path(v) for k, v in (screenshots or {}).items()}
    report = SiteReport()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            events: list[str] = []
            page.on("console", lambda m: events.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: events.append(f"script error: {e}"))
            page.on("requestfailed", lambda r: events.append(f"request failed: {r.url} ({r.failure})"))
            todo, seen = [index], {index}
            while todo:
                path = todo.pop(0)
                name = path.relative_to(root).with_suffix("").as_posix()
                events.clear()
                page.goto(path.as_uri(), wait_until="load", timeout=timeout_ms)
                report.pages.append(name)
                problems = list(events)
                problems += [f"image not loaded: {src}" for src in page.evaluate(_IMAGES_JS)]
                for href in page.evaluate(_LINKS_JS):
                    target = _local(urldefrag(href).url)
                    if target is None:
                        continue  # an external link: not followed (no network), not a broken file
                    if not target.exists():
                        problems.append(f"broken link: {href}")
                    elif target.suffix == ".html" and target.is_relative_to(root) and target not in seen:
                        seen.add(target)
                        todo.append(target)
                report.problems += [f"{name}: {p}" for p in problems]
                if name in wanted:  # the first table in view (a results page), else the top of the page
                    wanted[name].parent.mkdir(parents=True, exist_ok=True)
                    page.evaluate(_FIRST_TABLE_JS)
                    page.screenshot(path=str(wanted[name]), full_page=False)
                    report.screenshots[name] = str(wanted[name])
        finally:
            browser.close()
    missing = sorted(set(wanted) - set(report.screenshots))
    report.problems += [f"{m}: no such page for a screenshot" for m in missing]
    return report


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Check the report site in headless Chromium (issue 19).")
    ap.add_argument("site", type=Path)
    ap.add_argument("--screenshot", action="append", default=[], metavar="PAGE=PNG")
    a = ap.parse_args(argv)
    shots = dict(s.split("=", 1) for s in a.screenshot)
    report = check_site(a.site, shots)
    print(f"{len(report.pages)} pages visited, {len(report.problems)} problem(s)")
    for p in report.problems:
        print("  " + p)
    for page, png in report.screenshots.items():
        print(f"screenshot of {page}: {png}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

__all__ = ["SiteReport", "check_site", "find_chromium"]
