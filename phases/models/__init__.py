"""The model layer: embedded model profiles, the canonical loader (contamination guard) and backends.

Importing this package is cheap (no torch). Heavy pieces are imported on first use:

    from phases.models import load_model          # -> phases.models.loader.load_model
    from phases.models.registry import get_profile, DEFAULT_PROFILE, TEST_PROFILE
"""

from __future__ import annotations

__all__ = ["load_model", "LoadedModel", "ContaminationError"]


def __getattr__(name: str):
    # Lazy so that `runner status`-style imports of phases.models.registry stay torch-free.
    if name in __all__:
        from phases.models import loader  # lazy: a package __getattr__; keeps `import phases.models` minimal

        return getattr(loader, name)
    raise AttributeError(name)
