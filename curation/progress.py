"""The progress bar of a long curation step (the main process's terminal only; off in tests and servers)."""

from __future__ import annotations

from typing import Any


def bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar over ``total`` images, or None when disabled or empty (callers test for None)."""
    if not enabled or total == 0:
        return None
    from tqdm import tqdm  # the embed extra (a server imports curation without it, and shows no bar)

    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)
