"""``python -m embclust.compare``: kept for scripts written before the sweep package."""

from embclust.console import with_closed_pipe_quiet
from embclust.sweep.compare import main

if __name__ == "__main__":
    raise SystemExit(with_closed_pipe_quiet(main)())
