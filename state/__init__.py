"""Persistence for the runner: tables, migrations, atomic artifact writes. Imports no other package of this project."""
