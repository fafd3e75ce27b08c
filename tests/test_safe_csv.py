"""CSV artifacts cannot start spreadsheet formulas from ids or texts."""

import mlflow
import numpy as np
import pandas as pd

from embclust.tracking.safe_csv import neutralise

FORMULA_ID = '=HYPERLINK("http://evil.example","click")'
FORMULA_TEXT = "@SUM(A1)"


def test_text_cells_are_neutralised_and_numbers_left_alone():
    df = pd.DataFrame(
        {
            "id": [FORMULA_ID, "+1", "-cmd", "\tx", "\rx", "plain", "a=b"],
            "text": [FORMULA_TEXT] * 7,
            "score": [-1.5, -2.0, 0.0, 1.0, 2.0, 3.0, 4.0],
            "k": [-1, 0, 1, 2, 3, 4, 5],
        }
    )
    out = neutralise(df)
    assert out["id"].tolist() == ["'" + FORMULA_ID, "'+1", "'-cmd", "'\tx", "'\rx", "plain", "a=b"]
    assert set(out["text"]) == {"'" + FORMULA_TEXT}
    pd.testing.assert_series_equal(out["score"], df["score"])
    pd.testing.assert_series_equal(out["k"], df["k"])
    assert df["id"][0] == FORMULA_ID  # the caller's table is not changed


def test_run_artifacts_do_not_start_formulas(run_cli, tmp_path):
    rng = np.random.default_rng(0)
    # 20 columns: near-duplicates are looked for (not on data of 16 or fewer columns)
    centres = rng.normal(size=(3, 20)) * 5
    X = np.repeat(centres, 20, axis=0) + rng.normal(size=(60, 20)) * 0.1
    X[1] = X[0]  # a near-duplicate pair involving the formula id
    table = {"id": [FORMULA_ID] + [f"r{i}" for i in range(1, 60)], "text": [FORMULA_TEXT] * 60}
    table.update({f"f{j}": X[:, j] for j in range(20)})
    pd.DataFrame(table).to_csv(tmp_path / "e.csv", index=False)
    res = run_cli(
        "reducer=none", "analysis.explain.enabled=false", "dataset=csv", f"dataset.path={tmp_path / 'e.csv'}",
        "dataset.id_column=id", "dataset.text_column=text", "dataset.feature_prefix=f", "clusterer.n_clusters=3",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = res.runs()
    csvs = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id) if a.path.endswith(".csv")]
    assert {"cluster_profile.csv", "near_duplicates.csv"} <= set(csvs)
    seen_id = False
    for name in csvs:
        path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=name, dst_path=str(tmp_path / "a"))
        text = open(path, encoding="utf-8").read()
        cells = [cell.strip('"') for line in text.splitlines() for cell in line.split(",")]
        assert not [c for c in cells if c.startswith(("=", "@", "+"))], name
        seen_id |= "'=HYPERLINK(" in text
    assert seen_id  # the id is still there, neutralised
