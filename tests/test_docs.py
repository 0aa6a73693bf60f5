"""The API reference page documents every public name (the build itself runs in .ci/run)."""

from __future__ import annotations

import re
from pathlib import Path

import async_batchstate
import async_batchstate.consistency
import async_batchstate.instrumentation
import async_batchstate.migration
import async_batchstate.pubsub
import async_batchstate.testing

API_PAGE = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def test_every_public_name_has_an_api_entry() -> None:
    """``docs/api.md`` has a ``::: <package>[.<module>].<name>`` directive for each export."""
    page = API_PAGE.read_text()
    missing = [
        f"{module.__name__}.{name}"
        for module in (
            async_batchstate,
            async_batchstate.consistency,
            async_batchstate.instrumentation,
            async_batchstate.migration,
            async_batchstate.pubsub,
            async_batchstate.testing,
        )
        for name in module.__all__
        if name != "__version__"
        and not re.search(
            rf"^::: {re.escape(module.__name__)}(\.\w+)*\.{re.escape(name)}$", page, re.MULTILINE
        )
    ]
    assert [] == missing
