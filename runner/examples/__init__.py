"""Example pipelines shipped with the runner (no ML dependencies)."""
