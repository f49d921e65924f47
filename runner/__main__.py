"""`python -m runner ...`: the runner CLI (see `python -m runner --help`)."""
from runner.cli import entrypoint

entrypoint()
