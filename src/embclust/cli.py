"""The ``embclust`` command: use the clusters of logged runs (assign, search, export, compare, atlas)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from embclust.errors import EmbclustError, first_line

log = logging.getLogger("embclust")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
    )
    common.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")
    parser = argparse.ArgumentParser(prog="embclust", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{assign,search,export,compare,atlas}")

    p = sub.add_parser("assign", parents=[common], help="assign the rows of a new file to a run's clusters")
    p.add_argument("run", help="run id, or a sweep's parent id (its best cell is used)")
    p.add_argument("--input", required=True, type=os.path.expanduser, help="file to assign, read like the run's dataset (same loader and columns)")
    p.add_argument("--output", required=True, type=os.path.expanduser, help="output table, .parquet or .csv")
    p.add_argument("--explain", action="store_true", help="tabular runs: top 3 features (SHAP) behind each assignment")

    p = sub.add_parser("search", parents=[common], help="cluster-routed search of a text run's documents")
    p.add_argument("run", help="run id of a dataset=texts run, or a sweep's parent id")
    p.add_argument("query", help="query text")
    p.add_argument("--top-k", type=int, default=10, help="documents to return (default 10)")
    p.add_argument("--probe", type=int, default=3, help="nearest clusters to search in (default 3)")

    p = sub.add_parser("export", parents=[common], help="one table of a sweep (a cluster column per cell) or of a run")
    p.add_argument("sweep", help="the sweep's parent run id, or a single run's id (its id, cluster, x, y, label)")
    p.add_argument("--output", required=True, type=os.path.expanduser, help="output table, .parquet or .csv")

    p = sub.add_parser("atlas", parents=[common], help="browse a run's map in Embedding Atlas (needs the atlas extra)")
    p.add_argument("run", help="run id, or a sweep's parent id (its best cell is used)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default 5055, or a free one when it is taken; 0: a free one)")
    p.add_argument("--no-browser", action="store_true", help="only print the URL, do not open a browser")

    sub.add_parser("compare", add_help=False, help="leaderboard of a sweep (see embclust compare --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; user errors print one line on stderr and return 1."""
    from embclust import signals
    from embclust.console import with_closed_pipe_quiet

    try:
        # SIGTERM and SIGHUP stop a command as Ctrl-C does (its output's part file removed), and
        # SIGINT does so also where it started ignored (a script's background job).
        with signals.stop_on_signals():
            return with_closed_pipe_quiet(_main)(argv)
    except KeyboardInterrupt:  # Ctrl-C: one line and the shell's status, no traceback
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    except signals.Stopped as stopped:
        print(f"{stopped}: nothing was written", file=sys.stderr)
        return stopped.exit_code


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compare":
        from embclust.sweep import compare

        return compare.main(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    log.setLevel(logging.WARNING if args.quiet else logging.INFO)

    # Artifact downloads would draw progress bars on stderr for every small file.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    from mlflow.exceptions import MlflowException

    from embclust.tracking.store import check_store_to_read, default_tracking_uri

    mlflow.set_tracking_uri(args.tracking_uri or default_tracking_uri())
    try:
        given_as = "--tracking-uri" if args.tracking_uri else "MLFLOW_TRACKING_URI"
        check_store_to_read(mlflow.get_tracking_uri(), given_as=given_as)  # at once, not after MLflow's retries
        if args.command == "assign":
            import numpy as np

            from embclust.use.assign import assign

            table = assign(args.run, args.input, args.output, explain=args.explain)
            clusters, counts = np.unique(table["cluster"].to_numpy(), return_counts=True)
            summary = ", ".join(f"{c}: {n}" for c, n in zip(clusters, counts))
            print(f"assigned {table.num_rows} rows ({table['method'][0].as_py()}) to {args.output}; rows per cluster: {summary}")
        elif args.command == "search":
            import pandas as pd

            from embclust.use.search import search

            table = search(args.run, args.query, top=args.top_k, probe=args.probe)
            table["text"] = table["text"].map(lambda t: t if len(t) <= 70 else t[:67] + "...")
            with pd.option_context("display.width", 200, "display.max_colwidth", 80):
                print(table.to_string(index=False))
        elif args.command == "export":
            from embclust.use.export import export_sweep

            table = export_sweep(args.sweep, args.output)
            if "cluster" in table.column_names:  # a single run's own table
                print(f"wrote {args.output}: {table.num_rows} rows ({', '.join(table.column_names)})")
            else:
                cells = [c for c in table.column_names if c not in ("id", "label", "x", "y")]
                print(f"wrote {args.output}: {table.num_rows} rows, {len(cells)} cell columns ({', '.join(cells)})")
        elif args.command == "atlas":
            from embclust.use import atlas

            server = atlas.open_atlas(args.run, host=args.host, port=args.port, open_browser=not args.no_browser)
            print(server.url, flush=True)
            atlas.serve(server)  # until Ctrl-C
    except (EmbclustError, MlflowException) as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:  # a path the command reads or writes, outside the places that name their setting
        from embclust.errors import os_error_reason

        where = getattr(exc, "filename", None)
        print(f"error: {str(where) + ': ' if where else ''}{os_error_reason(exc, where)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
