"""python -m pipeline.demo: the command line (pipeline/demo/cli.py)."""

import sys

from pipeline.demo.cli import main

# guarded: a worker process started by spawn or forkserver imports this module again
if __name__ == "__main__":
    sys.exit(main())
