"""The README and docs/: short README, a site that builds with ``mkdocs build --strict``, links
that resolve, generated tables that match their stores, and code that does not drift: every
``bench`` command shown parses with the CLI's own parser, and every Python block runs (those
that need a GPU box, weights or data on disk say so with ``<!-- not run: REASON -->``)."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(?:<!-- not run: (?P<skip>[^>]+) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)


def _blocks(lang: str):
    for page in PAGES:
        for m in FENCE.finditer(page.read_text()):
            if m.group("lang") == lang:
                yield page, m.group("body"), m.group("skip")


def test_readme_is_short_and_every_page_starts_with_a_summary():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    for page in PAGES[1:]:
        lines = page.read_text().splitlines()
        assert lines[0].startswith("# ") and lines[1] == "" and lines[2] and not lines[2].startswith(("#", "```", "|", "!", "<!--")), page


def test_mkdocs_builds_strict(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "site" / "reliability" / "index.html").is_file()


def _anchors(page: Path) -> set[str]:
    """The ids mkdocs (Python-Markdown's toc) and GitHub give the headings of a page."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            text = re.sub(r"[`*]", "", line.lstrip("#").strip()).lower()
            out.add(re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", text)).strip("-"))
    return out


def test_readme_links_resolve():
    """mkdocs checks the docs' own links; the README is outside the site, so here."""
    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        file = ROOT / path if path else ROOT / "README.md"
        assert file.exists(), f"README links to {target}: no such file"
        if anchor:
            assert anchor in _anchors(file), f"README links to {target}: no such heading"


def test_generated_tables_match_their_stores_in_the_readme_and_docs():
    from bench.tables import readme_files, render_readme

    files = readme_files(ROOT)
    assert set(files) == set(PAGES)
    text = "".join(f.read_text() for f in files)
    for suite in ("mini", "mini-superb", "mini-deploy", "mini-ptq", "mini-personal", "paper", "deploy/hubert_base"):
        assert f"<!-- bench table {suite} --store results" in text, suite
    for f in files:
        assert render_readme(f.read_text(), ROOT) == f.read_text(), f"{f}: tables differ from results/: run `bench readme`"


def test_readme_check_fails_on_a_hand_edited_docs_table(tmp_path, monkeypatch):
    """`bench readme --check` covers docs pages: a number typed over a generated cell fails."""
    from bench.cli import main

    whole = (ROOT / "docs" / "measurements.md").read_text()
    start = whole.index("<!-- bench table mini --store results -->")
    page = "# Measurements\n\n" + whole[start: whole.index("<!-- end table -->", start)] + "<!-- end table -->\n"
    cell = re.compile(r"\d+\.\d\d ± ").search(page)  # the first mean of the generated table
    edited = page[:cell.start()] + "99.99 ± " + page[cell.end():]
    assert edited != page
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "measurements.md").write_text(page)
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "results").symlink_to(ROOT / "results")
    monkeypatch.chdir(tmp_path)
    assert main(["readme", "--check", "docs/measurements.md"]) == 0
    (tmp_path / "docs" / "measurements.md").write_text(edited)
    assert main(["readme", "--check", "docs/measurements.md"]) == 2


def _commands(body: str) -> list[str]:
    """The shell commands of a block, continuation lines joined."""
    return [line.strip() for line in body.replace("\\\n", " ").splitlines() if line.strip()]


def test_every_bench_command_shown_parses_with_the_cli():
    parser = build_parser()
    seen = 0
    for page, body, _ in _blocks("bash"):
        for line in _commands(body):
            for command in re.split(r"\s*&&\s*", line):
                argv = shlex.split(command, comments=True)
                if not argv or argv[0] != "bench":
                    continue
                seen += 1
                try:
                    parser.parse_args(argv[1:])
                except SystemExit:
                    pytest.fail(f"{page.name}: `{command}` does not parse with bench's CLI")
    assert seen >= 15


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if "```python" in p.read_text()], ids=lambda p: p.name)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    """A page's Python blocks run in order in one namespace, as a doctest would, in a scratch folder."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    ran = 0
    for m in FENCE.finditer(page.read_text()):
        if m.group("lang") != "python" or m.group("skip"):
            continue
        exec(compile(m.group("body"), f"{page.name}:python block", "exec"), namespace)
        ran += 1
    assert ran or all(m.group("skip") for m in FENCE.finditer(page.read_text()) if m.group("lang") == "python")


def _subparsers(parser) -> dict:
    import argparse

    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices if actions else {}


def test_every_bench_command_named_in_the_prose_exists_with_the_flags_it_shows():
    """Inline `bench ...` spans (synopses with placeholders, names of commands) checked against
    the CLI: the (sub)command exists and every --flag shown is one of its options."""
    parser = build_parser()
    commands = _subparsers(parser)
    seen = 0
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S).replace("\n", " ")
        for span in re.findall(r"`(bench [^`]+)`", text):
            words = span.split()[1:]
            names = words[0].split("/") if words and not words[0].startswith("-") else []
            for name in names:
                assert name in commands, f"{page.name}: `{span}`: no command {name!r}"
                sub = commands[name]
                nested = _subparsers(sub)
                if nested and len(words) > 1 and words[1] in nested:
                    sub = nested[words[1]]
                options = {o for a in sub._actions for o in a.option_strings}
                for flag in re.findall(r"(?<![\w-])(--[\w-]+)", span):
                    assert flag in options, f"{page.name}: `{span}`: {name} has no option {flag}"
            for flag in ([] if names else re.findall(r"(?<![\w-])(--[\w-]+)", span)):
                assert flag in {o for a in parser._actions for o in a.option_strings}, f"{page.name}: `{span}`"
            seen += 1
    assert seen >= 50
