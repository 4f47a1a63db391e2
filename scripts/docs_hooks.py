"""mkdocs hook (mkdocs.yml: hooks): serve the committed reference reports under results/ at results/ of
the site, so the guides link and show them where they are kept, without a second copy in docs/. Not
the reports' Markdown: a page outside the nav would fail the strict build; report.html is the same report.
mkdocs reads pages from docs_dir only; a hook's on_files is its documented way to add files."""
from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]


def on_files(files, config):
    for path in sorted((ROOT / "results").rglob("*")):
        if path.is_file() and path.suffix in {".png", ".html", ".csv", ".json"}:
            files.append(File(str(path.relative_to(ROOT)), str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files
