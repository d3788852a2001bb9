"""Progress bars for ``optimize`` and ``map``: tqdm without its background monitor thread."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


class _Bar(tqdm):  # type: ignore[misc]  # tqdm is untyped
    monitor_interval = 0  # no "tqdm_monitor" thread left running after the job


def progress_bar(*, total: int, initial: int, desc: str, enabled: bool) -> Any:
    """A bar of inputs done (on stderr), or a silent one."""
    return _Bar(total=total, initial=initial, unit="input", desc=desc, disable=not enabled)
