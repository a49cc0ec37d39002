"""The documentation: the README keeps its two set-up commands first and links every
document, and the links resolve."""

import re

from conftest import ROOT


def test_readme_starts_with_the_two_commands_and_links_the_docs():
    readme = (ROOT / "README.md").read_text()
    first = readme.split("\n## ", 2)[1]
    assert first.startswith("Set up") and "make run" in first and "make test" in first
    links = re.findall(r"\]\((docs/[^)]+)\)", readme)
    assert {p.name for p in (ROOT / "docs").glob("*.md")} == {
        link.split("/")[1] for link in links}
    for link in links:
        assert (ROOT / link).is_file(), link


def test_architecture_has_a_mermaid_diagram():
    assert "```mermaid" in (ROOT / "docs" / "architecture.md").read_text()
