"""The documentation: the README's links lead somewhere; the site builds with no broken link."""

import re
import shutil
import subprocess
import sys

import pytest

from .test_serve import ROOT


def mkdocs_build(root, site) -> subprocess.CompletedProcess:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    pytest.importorskip("material", reason="mkdocs-material is not installed")
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=root,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1"},
        timeout=120,
    )


def test_the_documentation_site_builds_strictly(tmp_path):
    built = mkdocs_build(ROOT, tmp_path / "site")
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "site" / "clients" / "index.html").exists()


def test_a_link_to_a_missing_heading_fails_the_build(tmp_path):
    """The check the test above relies on: strict mode refuses a broken anchor."""
    shutil.copy(ROOT / "mkdocs.yml", tmp_path)
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    with (tmp_path / "docs" / "api.md").open("a") as api:
        api.write("\nSee [nowhere](clients.md#no-such-heading).\n")
    built = mkdocs_build(tmp_path, tmp_path / "site")
    assert built.returncode != 0
    assert "no-such-heading" in built.stderr


def test_every_relative_link_of_the_readme_names_a_file_that_exists():
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    assert "docs/clients.md" in links
    assert [link for link in links if not (ROOT / link).exists()] == []


def test_the_readme_stays_short_and_in_a_newcomers_order():
    readme = (ROOT / "README.md").read_text()
    headings = re.findall(r"^## (.+)$", readme, re.MULTILINE)
    assert headings == ["Start it", "The first call", "Where to go next", "Map of the code"]
    assert len(readme.splitlines()) < 150
