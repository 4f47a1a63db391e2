"""mkdocs hooks (mkdocs.yml: hooks), two files the site takes from outside docs/ so that each has one
source: the home page is README.md, its links made relative to docs/; and the committed reference
reports under results/ are served at results/ of the site, so the guides show their figures without a
second copy (their Markdown as plain files: a page outside the nav would fail the strict build).
mkdocs reads pages from docs_dir only; on_files is its documented way to add files."""
from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]


def home_page() -> str:
    """README.md as the site's home: links into docs/ made relative to it, the reports' Markdown
    replaced by their HTML, and its list of the docs left to the site's navigation."""
    text = (ROOT / "README.md").read_text()
    text = text.replace("](docs/", "](")
    text = re.sub(r"(results/[\w./-]*?)report\.md", r"\1report.html", text)
    return text[:text.index("## Documentation")].rstrip() + (
        "\n\n## Where next\n\nThe navigation holds the guides, the reference generated from the code, the "
        "development pages and the measurement record. New here: [sweeps](guides/sweep.md), then "
        "[`harness doctor`](guides/doctor.md).\n")


class PlainFile(File):
    """A file served as it is, Markdown included (mkdocs would render a .md file as a page)."""

    def is_documentation_page(self) -> bool:
        return False


def on_files(files, config):
    files.append(File.generated(config, "index.md", content=home_page()))
    for path in sorted((ROOT / "results").rglob("*")):
        if path.is_file() and path.suffix in {".md", ".png", ".html", ".csv", ".json"}:
            files.append(PlainFile(str(path.relative_to(ROOT)), str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files
