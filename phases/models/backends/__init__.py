"""Generation/scoring backends behind one interface (phases.models.backends.base.Backend)."""
