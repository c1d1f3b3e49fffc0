"""The README stays a short, runnable page: at most 150 lines, the quickstart's two commands, no dead links."""

from __future__ import annotations

import re

from .helpers import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_readme_is_short_and_keeps_the_quickstart():
    assert len(README.splitlines()) <= 150
    quickstart = README.split("## Quickstart", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in quickstart.splitlines()] == ["make demo", "make test"]


def test_readme_links_point_at_files_of_the_repository():
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)]+)\)", README) if not t.startswith("http")]
    assert targets and all((REPO / t).exists() for t in targets if t), [t for t in targets if not (REPO / t).exists()]
