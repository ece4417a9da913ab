"""Regenerate the settings tables in the docs: ``python tests/support/docs_tables.py``.

A page marks a generated table with ``<!-- settings: topkrec config flags <command> -->`` and
``<!-- /settings -->``; everything between the two is replaced by ``topkrec config flags <command>``.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"(<!-- settings: topkrec config flags (\w+) -->\n)(.*?)(<!-- /settings -->)", re.S)
PAGES = ("docs/agent.md", "docs/pretrain.md")


def generated(command: str) -> str:
    from topkrec.cli.config import _setting_commands
    from topkrec.config.resolve import settings_markdown

    return settings_markdown(_setting_commands()[command])


def regenerate(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + generated(m.group(2)) + m.group(4), text)


if __name__ == "__main__":
    for page in PAGES:
        path = REPO / page
        text = path.read_text()
        new = regenerate(text)
        if new != text:
            path.write_text(new)
            print(f"updated {page}")
