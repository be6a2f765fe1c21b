"""The README and the configuration page document every setting, as generated from Settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.cli import replace_settings_table

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("doc", ["README.md", "docs/configuration.md"])
def test_settings_table_is_current(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    assert replace_settings_table(text) == text, f"{doc} is out of date: run `dadam settings --update {doc}`"


def test_readme_gives_exactly_the_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo" in text
    assert "make test" in text


def test_exceptions_page_lists_every_error() -> None:
    import connector.errors as errors

    page = (ROOT / "docs" / "exceptions.md").read_text(encoding="utf-8")
    for name in errors.__all__:
        assert name in page, f"docs/exceptions.md does not mention {name}"
