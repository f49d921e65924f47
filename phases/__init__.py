"""Pipeline steps and the canonical ML pieces of cai-bootstrap (see docs/conventions.md)."""
