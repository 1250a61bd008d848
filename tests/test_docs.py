"""The documentation tells the truth about the code: the config reference is generated from
the config models and current, and every link and repository path the pages name exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modelswarms import docs

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# repository paths the pages name in backticks (others: a user's files, run outputs)
TRACKED = ("docs/", "bench/", "examples/", "tests/", "scripts/", "src/", "experts/smollm2")


def test_every_config_field_has_a_description():
    assert docs.undocumented() == []


def test_the_config_reference_is_current():
    assert docs.PAGE.read_text() == docs.render(), \
        "docs/CONFIG.md is stale: run python -m modelswarms.docs"


def test_the_reference_reaches_every_utility_type_and_nested_section():
    text = docs.render()
    for heading in ("MultipleChoiceConfig", "LmEvalConfig", "CustomUtilityConfig",
                    "SwarmConfig", "HFFields", "JudgeConfig", "EstimateConfig"):
        assert f"## {heading}\n" in text, heading
    assert "Under `search`, `hswarm.role_search`." in text  # one section, both places
    assert '| `scoring` | "auto" \\| "letter"' in text and '| `"auto"` |' in text


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m) for m in re.findall(r"^#+ (.*)$", page.read_text(), re.M)}


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code is not a link
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(page):
    bad = []
    for target in links(page):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (anchor and file.suffix == ".md"
                                 and anchor not in anchors(file)):
            bad.append(target)
    assert not bad, f"{page.name}: broken links {bad}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_repository_paths_named_in_the_pages_exist(page):
    named = {m for m in re.findall(r"`([\w./-]+)`", page.read_text())
             if m.startswith(TRACKED) and "*" not in m}
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{page.name} names paths that are not there: {missing}"


@pytest.mark.parametrize(("page", "section"), [("README.md", "## Use it on your experts"),
                                               ("docs/USAGE.md", "## The config")])
def test_the_example_configs_are_valid(page, section):
    """Strict: a misspelt or moved key in a page's example config fails here."""
    import yaml

    from modelswarms.config import parse_config

    text = (ROOT / page).read_text().split(section, 1)[1]
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    cfg = parse_config(yaml.safe_load(block), page)
    assert cfg.experts.paths and cfg.data is not None and cfg.utility.type == "multiple_choice"
