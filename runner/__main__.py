"""`python -m runner ...`: the runner CLI (see `python -m runner --help`)."""
from runner.cli import entrypoint

if __name__ == "__main__":  # not under multiprocessing spawn (vLLM's engine process re-imports __main__)
    entrypoint()
