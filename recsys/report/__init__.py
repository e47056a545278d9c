"""Reports and inspection of run folders (never imports the training code).

- :mod:`recsys.report.build`: ``recsys report``, one self-contained HTML file;
- :mod:`recsys.report.plots`: the matplotlib figures (also for notebooks);
- :mod:`recsys.report.inspect`: ``recsys semantic-ids`` and ``recsys inspect``;
- :mod:`recsys.report.data`: what they read from a run folder.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_report", "render_report"]


def __getattr__(name: str) -> Any:  # lazy: importing the package does not load matplotlib
    if name in __all__:
        from recsys.report import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
