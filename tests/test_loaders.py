"""File loaders and their validation errors, on small generated files."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from embclust.errors import ConfigError, DataError
from embclust.data.loaders import load_npy, load_table, load_tabular


@pytest.fixture
def emb():
    return np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)


def test_npy_is_memory_mapped_with_labels_ids_and_names(tmp_path, emb):
    np.save(tmp_path / "X.npy", emb)
    np.save(tmp_path / "y.npy", np.arange(40) % 3)
    np.save(tmp_path / "ids.npy", np.array([f"img{i}" for i in range(40)]))
    (tmp_path / "names.txt").write_text("cat\ndog\nbird\n")
    ds = load_npy(
        str(tmp_path / "X.npy"),
        labels_path=str(tmp_path / "y.npy"),
        ids_path=str(tmp_path / "ids.npy"),
        label_names_path=str(tmp_path / "names.txt"),
    )
    assert isinstance(ds.X, np.memmap)  # not copied
    np.testing.assert_array_equal(ds.X, emb)
    assert ds.ids[3] == "img3" and ds.label_strings()[:3].tolist() == ["cat", "dog", "bird"]


@pytest.mark.parametrize(("ids", "message"), [
    (np.arange(80).reshape(40, 2), r"ids must be 1-D \(one per row\), got shape \(40, 2\) \(dataset.ids_path\)"),
    (np.arange(40) + 1j, r"ids must be integers or text, got dtype complex128 \(dataset.ids_path\)"),
])
def test_ids_that_no_table_can_hold_are_refused_when_loaded_naming_the_file(tmp_path, emb, ids, message):
    # They used to pass and fail the run at its last stage, in pyarrow ("only handle 1-dimensional arrays").
    np.save(tmp_path / "X.npy", emb)
    np.save(tmp_path / "ids.npy", ids)
    with pytest.raises(DataError, match="ids.npy: " + message):
        load_npy(str(tmp_path / "X.npy"), ids_path=str(tmp_path / "ids.npy"))


def test_float64_values_beyond_float32s_range_are_named_not_called_nan_or_inf(tmp_path):
    # Cast to float32 they became inf, and the run said the file held NaN or inf, which it does not.
    X = np.random.default_rng(0).random((50, 4))
    X[7, 2] = 1e39
    np.save(tmp_path / "big.npy", X)
    with pytest.raises(DataError, match=r"big.npy \(dataset.path\): values beyond float32's range .* in 1 of 50 rows "
                                        r"\(first rows, from 0: 7\)"):
        load_npy(str(tmp_path / "big.npy"))
    pq.write_table(pa.table({f"f{i}": X[:, i] for i in range(4)}), tmp_path / "big.parquet")
    with pytest.raises(DataError, match=r"big.parquet: column 'f2' holds values beyond float32's range"):
        load_table(str(tmp_path / "big.parquet"), feature_prefix="f")
    with pytest.raises(DataError, match=r"big.parquet: column 'f2' holds values beyond float32's range"):
        np.asarray(load_table(str(tmp_path / "big.parquet"), feature_prefix="f", rows_on_driver=False).X[np.arange(50)])
    pcsv.write_csv(pa.table({f"f{i}": X[:, i] for i in range(4)}), tmp_path / "big.csv")  # parsed straight to float32
    with pytest.raises(DataError, match=r"big.csv: column 'f2' holds values beyond float32's range \(magnitude up to 1e\+39"):
        load_table(str(tmp_path / "big.csv"), feature_prefix="f")
    X[7, 2] = np.inf  # a real inf is still reported as one, by the validation
    np.save(tmp_path / "inf.npy", X)
    assert np.isinf(load_npy(str(tmp_path / "inf.npy")).X[7, 2])
    pcsv.write_csv(pa.table({f"f{i}": X[:, i] for i in range(4)}), tmp_path / "inf.csv")
    assert np.isinf(load_table(str(tmp_path / "inf.csv"), feature_prefix="f").X[7, 2])


@pytest.mark.parametrize("past_first_block", [False, True])
def test_a_csv_row_with_too_few_fields_is_named_by_its_row(tmp_path, monkeypatch, past_first_block):
    from embclust.data import loaders

    if past_first_block:  # types from the first 1 KiB; the full read, on several threads, meets the row
        monkeypatch.setattr(loaders, "_CSV_READ", pcsv.ReadOptions(block_size=1 << 10))
    rows = 3_000
    lines = ["f0,f1,f2"] + [f"{i},{i % 7},{i % 3}" for i in range(rows)]
    lines[rows - 3] = "1,2"
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    what = "failed to read columns" if past_first_block else "cannot be read as csv"
    with pytest.raises(DataError, match=rf"r.csv: {what} \(CSV parse error at row {rows - 2} counting the header: "
                                        r"Expected 3 columns, got 2"):
        load_table(str(tmp_path / "r.csv"), feature_prefix="f")


def test_a_utf16_csv_is_named_as_such_not_parsed_into_one_garbled_column(tmp_path):
    (tmp_path / "u.csv").write_text("f0,f1\n1,2\n3,4\n", encoding="utf-16")  # Excel's "Unicode text"
    with pytest.raises(DataError, match=r"u.csv: the file is UTF-16 .* save it as CSV UTF-8"):
        load_table(str(tmp_path / "u.csv"), feature_prefix="f")
    (tmp_path / "b.csv").write_text("f0,f1\n1,2\n3,4\n", encoding="utf-8-sig")  # UTF-8 with a BOM reads
    assert load_table(str(tmp_path / "b.csv"), feature_prefix="f").X.shape == (2, 2)


def test_a_label_column_is_never_also_a_feature(tmp_path):
    X = np.random.default_rng(0).random((30, 3))
    pq.write_table(pa.table({"f0": X[:, 0], "f1": X[:, 1], "f2": (X[:, 2] > 0.5).astype(np.int64)}), tmp_path / "t.parquet")
    ds = load_table(str(tmp_path / "t.parquet"), feature_prefix="f", label_column="f2")  # matched by the prefix: left out
    assert ds.X.shape == (30, 2) and ds.feature_names == ["f0", "f1"]
    with pytest.raises(ConfigError, match="column 'f2' is in dataset.feature_columns and is also the id, label"):
        load_table(str(tmp_path / "t.parquet"), feature_columns=["f0", "f2"], label_column="f2")


def test_npz_picks_named_array(tmp_path, emb):
    np.savez(tmp_path / "d.npz", other=np.zeros(3), emb=emb)
    np.testing.assert_array_equal(load_npy(str(tmp_path / "d.npz"), key="emb").X, emb)
    with pytest.raises(DataError, match="no array named 'x' \\(arrays: other, emb\\)"):
        load_npy(str(tmp_path / "d.npz"), key="x")
    np.save(tmp_path / "one.npy", emb)  # a key given for a .npy was ignored
    with pytest.raises(ConfigError, match="dataset.key='emb' names an array of a .npz archive; .*one.npy is a .npy"):
        load_npy(str(tmp_path / "one.npy"), key="emb")
    # without a key, an archive of several arrays clustered the first one (8 centroids) without a word
    with pytest.raises(DataError, match=r"d.npz \(dataset.path\): the .npz archive holds 2 arrays \(other, emb\): name the one "
                                        "to cluster with dataset.key=NAME"):
        load_npy(str(tmp_path / "d.npz"))
    np.savez(tmp_path / "single.npz", emb)
    np.testing.assert_array_equal(load_npy(str(tmp_path / "single.npz")).X, emb)


def test_npy_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_npy(str(tmp_path / "missing.npy"))
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(DataError, match=r"unsupported extension '.txt' \(allowed: .npy, .npz\)"):
        load_npy(str(tmp_path / "x.txt"))
    np.save(tmp_path / "v.npy", np.zeros(5))
    with pytest.raises(DataError, match="expected a 2-D matrix"):
        load_npy(str(tmp_path / "v.npy"))


def _frame(emb, prefix="bert_"):
    cols = {f"{prefix}{j}": emb[:, j] for j in range(emb.shape[1])}
    return pa.table(
        {"article_id": [f"a{i}" for i in range(len(emb))], "cat": ["x", "y"] * (len(emb) // 2), **cols,
         "desc": [f"text {i}" for i in range(len(emb))]}
    )


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_table_with_prefixed_columns(tmp_path, emb, fmt):
    path = tmp_path / f"e.{fmt}"
    df = _frame(emb)
    pq.write_table(df, path) if fmt == "parquet" else pcsv.write_csv(df, path)
    ds = load_table(str(path), id_column="article_id", feature_prefix="bert_", label_column="cat", text_column="desc")
    assert ds.X.dtype == np.float32 and ds.X.shape == (40, 6)
    np.testing.assert_allclose(ds.X, emb, rtol=1e-6)
    assert ds.ids[1] == "a1" and ds.labels[1] == "y" and ds.texts[2] == "text 2"
    assert ds.feature_names == [f"bert_{j}" for j in range(6)]


def test_table_vector_column_and_ragged_rows(tmp_path, emb):
    pq.write_table(pa.table({"id": range(40), "vec": emb.tolist()}), tmp_path / "v.parquet")
    np.testing.assert_allclose(load_table(str(tmp_path / "v.parquet"), vector_column="vec").X, emb, rtol=1e-6)
    rows = emb.tolist()
    rows[7] = rows[7][:4]
    pq.write_table(pa.table({"id": range(40), "vec": rows}), tmp_path / "r.parquet")
    with pytest.raises(DataError, match=r"ragged: 1 of 40 rows are not of length 6 \(first ids: 7\)"):
        load_table(str(tmp_path / "r.parquet"), id_column="id", vector_column="vec")
    rows[7] = None  # a missing vector is named as such, not as a vector of length 0
    pq.write_table(pa.table({"id": range(40), "vec": rows}), tmp_path / "n.parquet")
    with pytest.raises(DataError, match=r"'vec' is empty \(null\) in 1 of 40 rows \(first ids: 7\)"):
        load_table(str(tmp_path / "n.parquet"), id_column="id", vector_column="vec")


def test_table_errors_name_the_problem(tmp_path, emb):
    path = tmp_path / "e.parquet"
    pq.write_table(_frame(emb), path)
    # a numbered run of columns is one entry, so the columns after it show (they were cut off at 20)
    with pytest.raises(DataError, match=r"no feature columns match prefix 'feature_'; columns: article_id, cat, "
                                        r"bert_0\.\.bert_5 \(6 columns\), desc$"):
        load_table(str(path), feature_prefix="feature_")
    with pytest.raises(DataError, match=r"column 'descr' \(dataset.text_column\) not found \(did you mean 'desc'\?\)"):
        load_table(str(path), feature_prefix="bert_", text_column="descr")
    with pytest.raises(DataError, match="feature column 'cat' is not numeric"):
        load_table(str(path), feature_columns=["bert_0", "cat"])
    with pytest.raises(DataError, match="column 'label' \\(dataset.label_column\\) not found"):
        load_table(str(path), feature_prefix="bert_", label_column="label")
    with pytest.raises(ConfigError, match="feature_prefix"):
        load_table(str(path))
    with pytest.raises(ConfigError, match="dataset.vector_column and dataset.feature_prefix are set together"):
        load_table(str(path), vector_column="bert_0", feature_prefix="bert_")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_duplicate_column_names_are_refused_not_guessed(tmp_path, fmt):
    table = pa.Table.from_arrays([pa.array([0, 1, 2]), pa.array([1.0, 2.0, 3.0]), pa.array([4.0, 5.0, 6.0])],
                                 names=["id", "feature_0", "feature_0"])
    path = tmp_path / f"dup.{fmt}"
    pq.write_table(table, path) if fmt == "parquet" else pcsv.write_csv(table, path)
    with pytest.raises(DataError, match=r"dup\.\w+: duplicate column names 'feature_0'"):
        load_table(str(path), id_column="id", feature_prefix="feature_")


def test_missing_ids_are_refused_with_their_rows(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text("id,feature_0,feature_1\n0,1.5,2.5\n,3.5,4.5\n2,5.5,6.5\n")
    with pytest.raises(DataError, match=r"id column 'id' \(dataset.id_column\) is empty in 1 of 3 rows \(first rows: 1\)"):
        load_table(str(path), id_column="id", feature_prefix="feature_")


def test_a_csv_separated_by_semicolons_says_so(tmp_path):
    path = tmp_path / "semi.csv"
    path.write_text("id;feature_0;feature_1\n0;1.5;2.5\n1;3.5;4.5\n")
    with pytest.raises(DataError, match="looks separated by ';'"):
        load_table(str(path), id_column="id", feature_prefix="feature_")


def test_tabular_encodes_categories(tmp_path):
    (tmp_path / "u.csv").write_text("user,age,plays,plan\nu1,20,1.5,free\nu2,30,2.0,pro\nu3,40,0.5,free\n")
    ds = load_tabular(str(tmp_path / "u.csv"), numeric_columns=["age", "plays"], categorical_columns=["plan"], id_column="user")
    assert ds.feature_names == ["age", "plays", "plan_free", "plan_pro"]
    np.testing.assert_array_equal(ds.X, [[20, 1.5, 1, 0], [30, 2.0, 0, 1], [40, 0.5, 1, 0]])
    ordinal = load_tabular(str(tmp_path / "u.csv"), numeric_columns=["age"], categorical_columns=["plan"], encoding="ordinal")
    assert ordinal.X[:, 1].tolist() == [0, 1, 0]
    with pytest.raises(DataError, match="numeric column 'plan' is not numeric .*: list it in dataset.categorical_columns"):
        load_tabular(str(tmp_path / "u.csv"), numeric_columns=["plan"])
    with pytest.raises(ConfigError, match="encoding='hash' is not allowed"):
        load_tabular(str(tmp_path / "u.csv"), numeric_columns=["age"], encoding="hash")
    # one column given alone (dataset.numeric_columns=age) is that column, not the letters a, g, e
    alone = load_tabular(str(tmp_path / "u.csv"), numeric_columns="age", categorical_columns="plan")
    assert alone.feature_names == ["age", "plan_free", "plan_pro"]
    with pytest.raises(ConfigError, match=r"dataset.numeric_columns=\[1, 2\] must be a list of column names"):
        load_tabular(str(tmp_path / "u.csv"), numeric_columns=[1, 2])


def test_tabular_refuses_a_column_listed_twice_or_in_two_roles(tmp_path):
    # They ran: a column twice counted twice in the distances (or pyarrow's KeyError "exists 2 times"),
    # and a label or id among the features made the clusters follow it.
    (tmp_path / "u.csv").write_text("user,age,plays,plan\nu1,20,1.5,free\nu2,30,2.0,pro\nu3,40,0.5,free\n")
    path = str(tmp_path / "u.csv")
    with pytest.raises(ConfigError, match=r"^dataset.numeric_columns lists column 'age' twice: list each column once$"):
        load_tabular(path, numeric_columns=["age", "plays", "age"])
    with pytest.raises(ConfigError, match=r"column 'plan' is in dataset.numeric_columns and dataset.categorical_columns"):
        load_tabular(path, numeric_columns=["age", "plan"], categorical_columns=["plan"])
    with pytest.raises(ConfigError, match=r"column 'plan' is dataset.label_column and a feature"):
        load_tabular(path, numeric_columns=["age"], categorical_columns=["plan"], label_column="plan")
    with pytest.raises(ConfigError, match=r"column 'age' is dataset.id_column and a feature"):
        load_tabular(path, numeric_columns=["age", "plays"], id_column="age")
    with pytest.raises(ConfigError, match=r"^dataset.feature_columns lists column 'age' twice"):
        load_table(path, feature_columns=["age", "age", "plays"])


def test_tabular_datasets_say_so_through_sampling_and_the_cache(tmp_path):
    from embclust.data.dataset import take_rows
    from embclust.sweep.cache import cached_dataset

    (tmp_path / "u.csv").write_text("age,plays\n20,1\n30,2\n40,3\n50,4\n")
    ds = load_tabular(str(tmp_path / "u.csv"), numeric_columns=["age", "plays"])
    assert ds.from_tabular and take_rows(ds, np.array([0, 2])).from_tabular
    for _ in range(2):  # miss, then hit
        cached, _ = cached_dataset({"path": str(tmp_path / "u.csv")}, tmp_path / "cache", lambda: ds)
        assert cached.from_tabular
    assert not load_npy(_save_npy(tmp_path)).from_tabular


def _save_npy(tmp_path):
    np.save(tmp_path / "e.npy", np.ones((3, 4), dtype=np.float32))
    return str(tmp_path / "e.npy")


def test_csv_missing_values_are_nan_features_and_missing_labels(tmp_path):
    (tmp_path / "m.csv").write_text('id,f0,f1,cat,desc\n1,0.5,1.0,a,hello\n2,,2.0,,\n3,1.5,NaN,c,""\n')
    ds = load_table(str(tmp_path / "m.csv"), id_column="id", feature_prefix="f", label_column="cat", text_column="desc")
    np.testing.assert_array_equal(ds.X, np.array([[0.5, 1.0], [np.nan, 2.0], [1.5, np.nan]], dtype=np.float32))
    assert ds.ids.dtype == np.int64 and ds.ids.tolist() == [1, 2, 3]
    assert ds.labels.tolist() == ["a", "(missing)", "c"] and ds.texts.tolist() == ["hello", "", ""]


@pytest.mark.parametrize("unknown", ["-1", "", "NaN"])
def test_a_table_label_column_marks_unknown_labels_as_a_labels_npy_does(tmp_path, unknown):
    # -1, an empty cell or NaN in a numeric label column is an unknown label: shown as unknown and
    # left out of the agreement scores, not a class of its own.
    from sklearn.metrics import adjusted_rand_score

    from embclust.scoring.metrics import agreement_scores

    truth = ["0", "0", unknown, "1", "1", unknown, "2", "2"]
    rows = "".join(f"{i},{i * 0.5},{t}\n" for i, t in enumerate(truth))
    (tmp_path / "l.csv").write_text("id,f0,label\n" + rows)
    ds = load_table(str(tmp_path / "l.csv"), id_column="id", feature_prefix="f", label_column="label")
    assert ds.labels.tolist() == [0, 0, -1, 1, 1, -1, 2, 2]
    assert ds.label_strings().tolist() == ["0", "0", "unknown", "1", "1", "unknown", "2", "2"]
    clusters = np.array([0, 1, 2, 1, 1, 0, 2, 2])
    known = ds.labels >= 0
    assert agreement_scores(ds.labels, clusters)["ari"] == adjusted_rand_score(ds.labels[known], clusters[known])


def test_label_columns_beyond_float_precision_keep_their_classes_and_negatives_are_said(tmp_path, caplog):
    # Ids as labels: whole numbers above 2**53 (or above int64) must not merge into one float, and
    # negative labels, which mean unknown, are counted in one warning line.
    big = [str(2**63 + v) for v in (0, 1, 2, 1)]
    (tmp_path / "b.csv").write_text("id,f0,label\n" + "".join(f"{i},{i},{v}\n" for i, v in enumerate(big)))
    ds = load_table(str(tmp_path / "b.csv"), id_column="id", feature_prefix="f", label_column="label")
    assert ds.labels.tolist() == big
    (tmp_path / "n.csv").write_text("id,f0,label\n" + "".join(f"{i},{i},{v}\n" for i, v in enumerate([-3, -2, 0, 1, ""])))
    with caplog.at_level("WARNING"):
        ds = load_table(str(tmp_path / "n.csv"), id_column="id", feature_prefix="f", label_column="label")
    assert ds.labels.tolist() == [-3, -2, 0, 1, -1]
    assert "2 of 5 rows hold a negative label, which means unknown" in caplog.text


def test_an_empty_cell_of_a_text_label_column_is_left_out_of_the_agreement_scores():
    from sklearn.metrics import adjusted_rand_score

    from embclust.scoring.metrics import agreement_scores

    truth = np.array(["a", "a", "(missing)", "b", "b"], dtype=object)
    clusters = np.array([0, 0, 1, 1, 1])
    assert agreement_scores(truth, clusters)["ari"] == adjusted_rand_score(truth[[0, 1, 3, 4]], clusters[[0, 1, 3, 4]]) == 1.0


def test_csv_value_of_another_type_after_the_first_block_names_the_column(tmp_path, monkeypatch):
    from embclust.data import loaders

    monkeypatch.setattr(loaders, "_CSV_READ", pcsv.ReadOptions(block_size=1 << 10))  # types from the first 1 KiB
    rows = "".join(f"{i},{i / 2}\n" for i in range(500))
    (tmp_path / "a.csv").write_text(f"id,f0\n{rows}abc,1.0\n")
    with pytest.raises(DataError, match=r"a.csv: failed to read columns \(column 'id': .*invalid value 'abc'\)"):
        load_table(str(tmp_path / "a.csv"), id_column="id", feature_prefix="f")
    (tmp_path / "b.csv").write_text(f"id,f0\n{rows}7,abc\n")
    with pytest.raises(DataError, match=r"b.csv: failed to read columns \(column 'f0': .*invalid value 'abc'\)"):
        load_table(str(tmp_path / "b.csv"), id_column="id", feature_prefix="f")


def test_fixed_size_vectors_and_columns_that_are_not_numbers(tmp_path, emb):
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1])
    pq.write_table(pa.table({"id": range(40), "vec": vectors, "flag": [True, False] * 20}), tmp_path / "f.parquet")
    np.testing.assert_array_equal(load_table(str(tmp_path / "f.parquet"), vector_column="vec").X, emb)
    with pytest.raises(DataError, match="feature column 'flag' is not numeric \\(type bool\\)"):
        load_table(str(tmp_path / "f.parquet"), feature_columns=["flag"])
    pq.write_table(pa.table({"vec": [["a"], ["b"]]}), tmp_path / "s.parquet")
    with pytest.raises(DataError, match="vector column 'vec' is list<element: string>, expected a list of numbers"):
        load_table(str(tmp_path / "s.parquet"), vector_column="vec")
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="x.parquet: cannot be read as parquet"):
        load_table(str(tmp_path / "x.parquet"), feature_prefix="f")


def test_a_table_without_a_feature_setting_names_the_file_and_its_columns(tmp_path):
    import pandas as pd

    from embclust.data.loaders import load_table
    from embclust.errors import ConfigError

    path = tmp_path / "t.csv"
    pd.DataFrame({"title": ["a", "b", "c"], "x": [1.0, 2.0, 3.0]}).to_csv(path, index=False)
    with pytest.raises(ConfigError, match=r"t\.csv: which columns hold the features\? set dataset\.feature_prefix.*\(columns: title, x\)"):
        load_table(path=str(path))


@pytest.mark.parametrize(("name", "content", "message"), [
    ("names.npy", np.random.default_rng(0).random((3, 2)), r"names must be a 1-D array of text .* got dtype float64 and shape \(3, 2\)"),
    ("names.json", '{"0": "cat"}', r"a JSON list of names, one per label"),
    ("names.json", '["cat", ', r"not valid JSON"),
    ("names.txt", b"\xff\xfe\x00c\x00a", r"not UTF-8 text"),
])
def test_label_names_that_are_not_a_list_of_names_are_refused_naming_the_file(tmp_path, emb, name, content, message):
    # A float matrix used to become names such as "[0.63 0.27]", shown on every plot and table.
    np.save(tmp_path / "X.npy", emb)
    np.save(tmp_path / "y.npy", np.arange(40) % 3)
    path = tmp_path / name
    if isinstance(content, np.ndarray):
        np.save(path, content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(DataError, match=rf"{name} \(dataset.label_names_path\): {message}"):
        load_npy(str(tmp_path / "X.npy"), labels_path=str(tmp_path / "y.npy"), label_names_path=str(path))


def test_a_csv_vector_column_written_as_text_is_read_as_vectors(tmp_path):
    # A CSV holds lists only as text: the column used to be refused as "string, expected a list".
    X = np.random.default_rng(0).normal(size=(30, 4)).round(4)
    pd.DataFrame({"id": range(30), "vec": [r.tolist() for r in X]}).to_csv(tmp_path / "lists.csv", index=False)
    pd.DataFrame({"id": range(30), "vec": list(X.astype(np.float32))}).to_csv(tmp_path / "arrays.csv", index=False)
    for name in ("lists.csv", "arrays.csv"):  # "[0.1, 0.2]" from lists, "[ 0.1 -0.2]" from NumPy arrays
        np.testing.assert_allclose(load_table(str(tmp_path / name), vector_column="vec", id_column="id").X, X, atol=1e-6)
    bad = pd.DataFrame({"id": range(30), "vec": [r.tolist() for r in X]})
    bad.loc[3, "vec"] = "[1, n/a, 2, 3]"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"bad.csv: vector column 'vec' holds text that is not a list of numbers .*'n/a'"):
        load_table(str(tmp_path / "bad.csv"), vector_column="vec")
    bad.loc[3, "vec"] = "[]"
    bad.to_csv(tmp_path / "empty.csv", index=False)
    with pytest.raises(DataError, match=r"empty.csv: vector column 'vec' is empty \(null\) in 1 of 30 rows \(first ids: 3\)"):
        load_table(str(tmp_path / "empty.csv"), vector_column="vec")


@pytest.mark.parametrize("key", ["labels_path", "ids_path"])
def test_a_companion_file_of_another_length_names_both_files(tmp_path, emb, key):
    # "dataset 'npy': labels has 100 entries but the matrix has 200 rows" named neither file nor key.
    np.save(tmp_path / "e.npy", emb)
    np.save(tmp_path / "short.npy", np.arange(emb.shape[0] - 1))
    with pytest.raises(DataError, match=rf"short.npy \(dataset.{key}\) has {emb.shape[0] - 1} entries but .*e.npy "
                                        rf"\(dataset.path\) has {emb.shape[0]} rows"):
        load_npy(str(tmp_path / "e.npy"), **{key: str(tmp_path / "short.npy")})


def test_an_id_like_categorical_column_is_warned_about(tmp_path, caplog):
    # categorical_columns=[account_id] made 200 one-hot columns the clusters followed, without a word.
    rows = "\n".join(f"u{i},{i % 7},{'free' if i % 2 else 'pro'}" for i in range(200))
    (tmp_path / "u.csv").write_text("user,age,plan\n" + rows + "\n")
    with caplog.at_level("WARNING"):
        load_tabular(str(tmp_path / "u.csv"), numeric_columns=["age"], categorical_columns=["user", "plan"])
    assert "categorical column 'user' has 200 distinct values in 200 rows, like an id: it becomes 200 one-hot" in caplog.text
    assert "'plan'" not in caplog.text


def test_label_names_for_labels_that_are_names_already_are_said_unused(tmp_path, emb, caplog):
    np.save(tmp_path / "e.npy", emb)
    np.save(tmp_path / "y.npy", np.array(["cat", "dog"] * (emb.shape[0] // 2)))
    (tmp_path / "names.txt").write_text("feline\ncanine\n")
    with caplog.at_level("WARNING"):
        ds = load_npy(str(tmp_path / "e.npy"), labels_path=str(tmp_path / "y.npy"),
                      label_names_path=str(tmp_path / "names.txt"))
    assert set(ds.labels) == {"cat", "dog"}
    assert "names.txt (dataset.label_names_path) is not used: the labels in" in caplog.text


def test_parquet_files_of_one_folder_without_the_first_files_columns_are_named(tmp_path):
    # pyarrow's KeyError('Field "f_5" does not exist in schema') reached the user (a traceback from assign).
    from embclust.data.loaders import load_parquet_dataset

    frame = pd.DataFrame({f"f_{i}": np.arange(10, dtype=np.float32) + i for i in range(8)})
    (tmp_path / "parts").mkdir()
    frame.iloc[:5].to_parquet(tmp_path / "parts" / "a.parquet")
    frame.iloc[5:, :5].to_parquet(tmp_path / "parts" / "b.parquet")
    with pytest.raises(DataError, match=r"b.parquet: has no column 'f_5', 'f_6', 'f_7', which the first file a.parquet "
                                        r"has: the files of dataset.path=.* must share their columns"):
        load_parquet_dataset(str(tmp_path / "parts"), feature_prefix="f_")


@pytest.mark.parametrize("role", ["label_column", "text_column"])
def test_a_label_or_text_column_of_lists_is_named_not_an_arrow_cast_error(tmp_path, role):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"f_0": [0.0, 1.0, 2.0], "f_1": [1.0, 0.0, 2.0], "tags": [["a", "b"]] * 3}), path)
    with pytest.raises(DataError, match=rf"t.parquet: (label|text) column 'tags' \(dataset.{role}\) holds "
                                        r"list<element: string> values, not one text or number per row"):
        load_table(str(path), feature_prefix="f_", **{role: "tags"})


def test_a_pipe_or_a_link_loop_is_named_as_such_not_as_a_missing_file(tmp_path):
    import os

    from embclust.data.loaders import check_file

    os.mkfifo(tmp_path / "fifo.npy")
    with pytest.raises(DataError, match=r"fifo.npy is not a regular file \(a pipe, socket or device\) \(dataset.path\)"):
        check_file(str(tmp_path / "fifo.npy"), (".npy",))
    os.symlink(tmp_path / "loop.csv", tmp_path / "loop.csv")
    with pytest.raises(DataError, match=r"loop.csv: its links lead back to themselves \(dataset.path\)"):
        check_file(str(tmp_path / "loop.csv"), (".csv",))
    with pytest.raises(DataError, match=r"^file not found: .*missing.csv \(dataset.path\)$"):
        check_file(str(tmp_path / "missing.csv"), (".csv",))


@pytest.mark.parametrize(("head", "kind"), [(b"PAR1", "a parquet file"), (b"\x1f\x8b\x08\x00", "gzip-compressed")])
def test_a_binary_file_named_csv_says_what_it_is_instead_of_quoting_its_bytes(tmp_path, head, kind):
    path = tmp_path / "data.csv"
    path.write_bytes(head + bytes(range(256)) * 4)
    with pytest.raises(DataError, match=rf"data.csv: the file is {kind}, not CSV text"):
        load_table(str(path), feature_prefix="f_")


@pytest.mark.parametrize("mmap", [False, True])
def test_a_npy_cut_short_says_what_its_header_declares(tmp_path, mmap):
    from embclust.data.loaders import _load_array

    np.save(tmp_path / "full.npy", np.zeros((1000, 16), np.float32))
    data = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut.npy: its header declares a 1000 x 16 float32 array \(64,128 bytes\) but the "
                                        r"file holds 32,064 bytes \(dataset.path\): it was cut short"):
        _load_array(str(tmp_path / "cut.npy"), "dataset.path", mmap=mmap)


def test_text_stored_as_binary_by_older_parquet_writers_is_read():
    from embclust.data.loaders import as_strings

    assert as_strings(pa.chunked_array([[b"hello", None]], pa.binary())).tolist() == ["hello", "(missing)"]
    with pytest.raises(DataError, match="^x holds binary values, which cannot be read as text"):
        as_strings(pa.chunked_array([[b"\xff\xfe"]], pa.binary()), where="x")


def test_a_semicolon_csv_with_decimal_commas_names_the_separator(tmp_path):
    # pyarrow's "Expected 1 columns, got 5" with the row quoted, and no word of the separator.
    frame = pd.DataFrame({f"f_{i}": [0.5, -1.25, 2.0] for i in range(4)})
    frame.to_csv(tmp_path / "semi.csv", sep=";", decimal=",", index=False)
    with pytest.raises(DataError, match=r"semi.csv: the header is separated by ';', not commas \(decimal commas too\?\)"):
        load_table(str(tmp_path / "semi.csv"), feature_prefix="f_")
