"""Train a 64-64-64-10 ReLU MLP on scikit-learn's bundled digits with Adam.

The data (1797 8x8 images of handwritten digits, 64 features, 10 classes)
ships with scikit-learn, so this runs offline. 20% of the images are held
out as the test set; they are also shown as validation data during training
(for monitoring only: nothing is selected on them). Prints the test accuracy,
macro precision/recall/F1 and the confusion matrix, and writes the loss plot
(digits_history.png) and the gradient graph (digits_grad.dot).

    python examples/digits_mlp.py [--target cpu] [--epochs 40]
"""
import argparse
import os
import time

import bpc


def load_data(test_size=0.2, seed=0):
    """Standardized train/test splits of the digits (stratified by class)."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    X_train, X_test, Y_train, Y_test = bpc.data.train_test_split(
        digits.data, digits.target, test_size, seed=seed, stratify=True)
    # Statistics from the training part only; +1 keeps the always-blank
    # border pixels (std 0) from being blown up.
    mean, std = X_train.mean(axis=0), X_train.std(axis=0) + 1.0
    return (X_train - mean) / std, (X_test - mean) / std, Y_train, Y_test


def build_model(seed=0):
    return bpc.nn.Sequential([
        bpc.nn.Dense(64, 64, "relu", seed=seed, name="hidden1"),
        bpc.nn.Dense(64, 64, "relu", seed=seed + 1, name="hidden2"),
        bpc.nn.Dense(64, 10, seed=seed + 2, name="out"),
    ])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default=None, choices=bpc.TARGETS, help="default: bpc's default target")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=".", help="folder for the plot and the DOT file")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    args = ap.parse_args(argv)

    X_train, X_test, Y_train, Y_test = load_data(seed=args.seed)
    print(f"digits: {len(X_train)} training and {len(X_test)} test images, 64 features, 10 classes")
    model = build_model(args.seed)
    optimizer = bpc.optim.Adam(lr=args.lr)
    t0 = time.perf_counter()
    history = bpc.fit(model, X_train, Y_train, epochs=args.epochs, batch_size=args.batch_size,
                      optimizer=optimizer, schedule=bpc.optim.CosineLR(args.epochs),
                      validation_data=(X_test, Y_test), target=args.target, seed=args.seed,
                      progress=not args.quiet)
    train_s = time.perf_counter() - t0
    target = history.train_step.target
    print(f"trained {history.epochs_run} epochs on target '{target}' in {train_s:.1f}s "
          f"(compiling included)")

    pred = model.predict(X_test, target=args.target).argmax(axis=1)
    results, cm, text = bpc.metrics.report(Y_test, pred, num_classes=10, rows="true digit")
    print(text)

    norms = {k.removeprefix("grad_norm/"): v[-1] for k, v in history.history.items()
             if k.startswith("grad_norm/")}
    print("gradient norms in the last epoch: " + ", ".join(f"{k} {v:.3g}" for k, v in norms.items()))

    os.makedirs(args.out, exist_ok=True)
    plot = bpc.plot_history(history, os.path.join(args.out, "digits_history.png"))
    graph = history.graph
    dot = os.path.join(args.out, "digits_grad.dot")
    bpc.to_dot([graph.loss, *graph.grads], path=dot, title="digits MLP: loss and its gradients")
    print(f"wrote {plot} and {dot}")
    results.update(history=history, train_seconds=train_s, confusion_matrix=cm)
    return results


if __name__ == "__main__":
    main()
