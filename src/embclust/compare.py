"""``python -m embclust.compare``: kept for scripts written before the sweep package."""

from embclust.sweep.compare import main

if __name__ == "__main__":
    raise SystemExit(main())
