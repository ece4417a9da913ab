"""The settings tables in the docs are the ones the code generates (`topkrec config flags <command>`)."""

from __future__ import annotations

import pytest

from support.docs_tables import BLOCK, PAGES, REPO, generated


@pytest.mark.parametrize("page", PAGES)
def test_settings_tables_match_the_declared_settings(page: str) -> None:
    text = (REPO / page).read_text()
    blocks = BLOCK.findall(text)
    assert blocks, f"{page} has no generated settings table"
    for _, command, table, _ in blocks:
        assert table == generated(command), (
            f"{page}: the `{command}` table is stale; regenerate it with `python tests/support/docs_tables.py`"
        )
