"""Command line: --help from the configs, hydra.verbose for more detail on stderr."""

import subprocess
import sys

import pytest

from conftest import REPO, RUN_PY


def test_help_lists_config_groups_keys_and_examples():
    out = subprocess.run([sys.executable, str(RUN_PY), "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "clusterer: agglomerative, hdbscan, kmeans, minibatch_kmeans" in out.stdout
    assert "reducer: none, pca, tsne, umap" in out.stdout
    assert "preprocess.pca_components" in out.stdout and "metrics.silhouette_sample_size" in out.stdout
    assert "python run.py -m " in out.stdout


def test_verbose_run_adds_step_details_that_a_default_run_keeps_off(run_cli):
    args = ("dataset=synthetic", "dataset.n_samples=300", "dataset.n_features=8", "clusterer.n_clusters=3",
            "reducer=none", "analysis.explain.enabled=false", "analysis.duplicates.enabled=false")
    quiet = run_cli(*args)
    loud = run_cli(*args, "hydra.verbose=embclust")
    assert quiet.returncode == loud.returncode == 0, loud.stderr[-2000:]
    assert "scores: n_clusters=3" not in quiet.stderr and "analysis: silhouette" not in quiet.stderr
    assert "scores: n_clusters=3" in loud.stderr and "analysis: silhouette" in loud.stderr
    assert quiet.stdout == loud.stdout == ""


@pytest.mark.parametrize(
    "body, code, stderr",
    [
        ("print('result')", 0, ""),
        ("print('result'); raise SystemExit(3)", 3, ""),
        ("print('result'); raise SystemExit('bad input: x')", 1, "bad input: x"),
        # SIGTERM stopped the run (its reason says so), a SIGINT on the way out raised 130: the
        # status is the one the reason names
        ("print('result'); from embclust import signals; signals.note_stop(15); raise SystemExit(130)", 143, ""),
    ],
)
def test_quick_exit_keeps_status_output_and_exit_handlers(tmp_path, body, code, stderr):
    script = tmp_path / "entry.py"
    script.write_text(
        "import atexit, sys\n"
        "from embclust import console\n"
        "atexit.register(lambda: print('handler ran', file=sys.stderr))\n"
        "def main():\n"
        f"    {body}\n"
        "console.exit_without_teardown(main)\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == code
    assert proc.stdout == "result\n"  # buffered stdout is flushed before the quick exit
    assert "handler ran" in proc.stderr
    assert stderr in proc.stderr


def test_a_reader_that_closes_the_pipe_gets_no_traceback():
    # `embclust compare ... | head -1` (the CLI entry points are wrapped so): the reader is gone
    # before the output is written
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        code = ("from embclust.console import with_closed_pipe_quiet\n"
                "raise SystemExit(with_closed_pipe_quiet(lambda: print('row ' * 50000) or 0)())")
        res = subprocess.run([sys.executable, "-c", code], stdout=write_end, stderr=subprocess.PIPE, text=True,
                             timeout=120)
    finally:
        os.close(write_end)
    assert res.returncode == 141 and res.stderr == ""


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # Hydra's "use +clusterer.n_cluster=5" led to KMeans's TypeError: the keys there are, the closest first
        (["clusterer.n_cluster=5"], "clusterer.n_cluster: clusterer=kmeans has no key 'n_cluster' (its keys: n_clusters, "
                                    "init, n_init, max_iter, random_state): did you mean clusterer.n_clusters?"),
        (["dataset.path=e.npy"], "dataset=digits has no key 'path' (its keys: name, sample_size, dedupe): to read your "
                                 "own file, choose the dataset's format first (dataset=npy, parquet, csv, texts or "
                                 "tabular)"),
        (["dataset=npy", "dataset.path=~/e.npy"], "must be quoted inside the override"),
        (["dataset=parquet", "dataset.feature_prefix=ф_"], "or letters beyond ASCII, must be quoted"),
        (["clusterer=kmeanz"], "Available options in 'clusterer': agglomerative, hdbscan, kmeans, minibatch_kmeans"),
        (["-m", "clusterer.n_clusters=3,4", "reducer=umapp"], "Could not find 'reducer/umapp'"),
    ],
)
def test_a_command_line_hydra_cannot_compose_is_one_line(tmp_path, overrides, expected):
    proc = subprocess.run([sys.executable, str(RUN_PY), *overrides], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: ") and expected in lines[0], proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_a_long_stage_says_it_is_still_running(caplog, monkeypatch):
    import time

    from embclust import stages

    monkeypatch.setattr(stages, "STILL_RUNNING_S", 0.05)
    timer = stages.StageTimer(("load", "map"))
    with caplog.at_level("INFO", logger="embclust.stages"):
        with timer("map"):
            time.sleep(0.3)
        time.sleep(0.2)  # and stops saying so once the stage is over
    still = [r.getMessage() for r in caplog.records if "still running" in r.getMessage()]
    assert 3 <= len(still) <= 7 and all(m.startswith("map: still running") for m in still)


def test_a_log_file_that_cannot_be_written_is_said_once(tmp_path, monkeypatch, capsys):
    # A full disk under hydra.run.dir printed Python's "--- Logging error ---" traceback for every line.
    import errno
    import logging

    from embclust import console

    monkeypatch.setattr(logging.FileHandler, "handleError", logging.FileHandler.handleError)  # restored after
    console.log_file_errors_once()
    handler = logging.FileHandler(tmp_path / "run.log")

    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    handler.stream = Full()
    logger = logging.getLogger("embclust.test_full_log")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for _ in range(3):
            logger.warning("a line")
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert err == (f"cannot write the log file {tmp_path / 'run.log'} (No space left on device): the run goes on, "
                   "logging to the console only\n")
