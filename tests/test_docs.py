"""The README and the docs site hold to the code: the reference pages are what harness/reference.py
generates, the site builds with warnings as errors and opens in Chromium with its navigation, every
`harness` command line shown parses with the real parser, and a user's runs leave the checkout clean."""
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import ROOT, run_harness

from harness import reference
from harness.paths import DEFAULT_RESULTS
from harness.cli import build_parser

DOCS = ROOT / "docs"
MARKDOWN = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def test_the_committed_reference_is_what_the_code_generates():
    generated = reference.generate()
    for name, text in generated.items():
        committed = (DOCS / "reference" / name).read_text()
        assert committed == text, f"docs/reference/{name} is stale: run `python -m harness.reference docs/reference`"
    assert sorted(p.name for p in (DOCS / "reference").glob("*.md")) == sorted(generated)


def test_the_reference_names_every_command_key_flag_and_cause():
    from harness import check, config, health
    from harness.report.tables import SUMMARY_COLUMNS
    pages = reference.generate()
    for command in ("sweep", "status", "tune", "check", "bench", "report", "ui", "compare", "doctor"):
        assert f"## harness {command}\n" in pages["cli.md"]
    for section, values in config.DEFAULTS.items():
        keys = [f"{section}.{k}" for k in values] if isinstance(values, dict) and section not in ("define", "factorial") \
            else [section]
        for key in keys:
            assert f"| `{key}` |" in pages["config.md"], key
    assert "| `train.epochs` | `15` | epochs of every grid point |" in pages["config.md"]
    for name in [*check.FLAGS, *health.RULES]:
        assert f"| `{name}` |" in pages["causes.md"], name
    for column in SUMMARY_COLUMNS:
        assert f"`{column}`" in pages["tracking.md"]
    assert "`health/dead_units`" in pages["tracking.md"] and "| `HARNESS_DEBUG` |" in pages["environment.md"]


def command_lines(text: str) -> list[str]:
    """The `harness` commands in the Markdown's bash blocks, continuation lines joined, each command of
    a `&&` chain apart, environment assignments and the venv's path left off."""
    found = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;|\|\|?", line.split(" #")[0]):
                words = part.split()
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words = words[1:]
                if words and words[0].endswith("harness") and words[0] in ("harness", ".venv/bin/harness"):
                    found.append(" ".join(words))
    return found


def test_every_command_line_in_the_readme_and_the_docs_parses():
    shown = {path: command_lines(path.read_text()) for path in MARKDOWN}
    assert len(shown[ROOT / "README.md"]) >= 5 and sum(map(len, shown.values())) >= 30
    for path, lines in shown.items():
        for line in lines:
            args = shlex.split(line)[1:]
            try:
                build_parser().parse_args(args)
            except SystemExit as e:                  # --help and --version exit 0 after printing
                assert e.code == 0, f"{path.relative_to(ROOT)}: {line}"
            except Exception as e:                   # noqa: BLE001 - the parser's UsageError
                pytest.fail(f"{path.relative_to(ROOT)}: `{line}` does not parse: {e}")


def test_the_command_lines_are_found_and_a_wrong_one_fails():
    text = "```bash\nKERAS_BACKEND=jax .venv/bin/harness sweep --set x=1 \\\n  --n-jobs 2 && harness ui  # serve\n```\n"
    assert command_lines(text) == [".venv/bin/harness sweep --set x=1 --n-jobs 2", "harness ui"]
    with pytest.raises(Exception, match="unrecognized arguments|invalid choice"):
        build_parser().parse_args(["sweep", "--no-such-option"])


def test_the_readme_is_a_users_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    text = "\n".join(lines)
    assert lines.index("## Quick start") < 40 and "harness doctor examples/whitening_question.py" in text
    assert not re.search(r"\b[0-9a-f]{7}\b(?![0-9a-f])", re.sub(r"```.*?```", "", text, flags=re.S)), \
        "commit hashes belong in docs/record/"


def test_a_users_runs_go_where_git_ignores_them_and_the_reference_reports_stay_tracked():
    assert DEFAULT_RESULTS.parts[0] != "results"
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.dest == "results":
                assert action.default == DEFAULT_RESULTS, name
    ignored = subprocess.run(["git", "check-ignore", "-q", str(DEFAULT_RESULTS / "whitening" / "report.md")], cwd=ROOT)
    assert ignored.returncode == 0
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "results/whitening/summary.csv"], cwd=ROOT,
                             capture_output=True)
    assert tracked.returncode == 0


@pytest.mark.slow
def test_a_command_run_in_a_fresh_clone_leaves_git_status_clean(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    run = run_harness("report", cwd=clone)            # writes the (empty) default report and its store
    assert run.returncode == 0, run.stderr[-2000:]
    assert (clone / DEFAULT_RESULTS / "whitening" / "report.md").is_file()
    assert subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True).stdout == ""


def build_site(site: Path, root: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    built = build_site(folder)
    assert built.returncode == 0, built.stderr[-4000:]
    return folder


def test_the_docs_site_builds_with_warnings_as_errors(site):
    for page in ["index.html", "guides/doctor/index.html", "reference/cli/index.html", "record/index.html"]:
        assert (site / page).is_file(), page
    assert (site / "results" / "whitening" / "miou.png").is_file()      # the committed reports, served


def test_a_broken_link_fails_the_build(tmp_path):
    """The same site, copied, with one page that links nowhere: strict mode makes the warning an error."""
    copy = tmp_path / "copy"
    shutil.copytree(DOCS, copy / "docs")
    for name in ("mkdocs.yml", "README.md", "scripts/docs_hooks.py"):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, copy / name)
    (copy / "results").symlink_to(ROOT / "results")
    assert build_site(tmp_path / "good", copy).returncode == 0
    (copy / "docs" / "guides" / "doctor.md").write_text("# Doctor\n\n[nowhere](no-such-page.md)\n")
    built = build_site(tmp_path / "bad", copy)
    assert built.returncode != 0 and "no-such-page.md" in built.stderr


@pytest.mark.slow
def test_the_docs_site_opens_in_chromium_with_its_navigation(site):
    from test_report_browser import browser_launched
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with browser_launched() as chromium:
            page = chromium.new_page()
            page.goto(f"http://127.0.0.1:{server.server_port}/")
            nav = page.locator("nav.md-nav--primary")
            for section in ("Guides", "Reference", "Development", "Measurement record"):
                assert nav.get_by_text(section, exact=True).count() >= 1, section
            nav.get_by_role("link", name="harness doctor", exact=True).first.click()
            page.wait_for_load_state()
            assert page.url.endswith("/guides/doctor/")
            assert "doctor" in page.locator("article h1").inner_text().lower()
            page.goto(f"http://127.0.0.1:{server.server_port}/guides/report/")
            shown = page.evaluate("[...document.images].filter(i => i.src.includes('/results/'))"
                                  ".map(i => i.complete && i.naturalWidth)")
            assert shown and all(shown), "the committed report's figures load in the report guide"
    finally:
        server.shutdown()


def test_the_reference_reports_are_regenerated_into_results_not_where_a_users_runs_go():
    script = (ROOT / "scripts" / "regenerate-reports.sh").read_text().splitlines()
    commands = [line.split("#")[0] for line in script if '"$harness" ' in line.split("#")[0]]
    assert len(commands) >= 6 and all(line.rstrip().endswith("--results results") for line in commands)
