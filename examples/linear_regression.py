"""Fit a linear regression by minimizing the mean squared error with bpc, and
compare it with the closed-form least-squares solution (np.linalg.lstsq).

Data: y = X w + b + noise, with 3 features. The model is one Dense layer
without activation; full-batch gradient descent with momentum converges to
the same weights the normal equations give.

    python examples/linear_regression.py [--target cpu] [--epochs 200]
"""
import argparse

import numpy as np

import bpc

TRUE_W = np.array([2.0, -3.5, 0.5])
TRUE_B = 1.25


def make_data(n=256, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(TRUE_W)))
    Y = X @ TRUE_W + TRUE_B + noise * rng.normal(size=n)
    return X, Y


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default=None, choices=bpc.TARGETS, help="default: bpc's default target")
    ap.add_argument("--epochs", type=int, default=200, help="full-batch steps")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    X, Y = make_data(seed=args.seed)
    model = bpc.nn.Dense(X.shape[1], 1, seed=args.seed, name="linear")
    history = bpc.fit(model, X, Y, epochs=args.epochs, batch_size=len(X), loss="mse",
                      optimizer=bpc.optim.SGD(lr=args.lr, momentum=0.9), target=args.target,
                      progress=False)
    w, b = model.W.value[:, 0], float(model.b.value[0])

    # Closed form: least squares on [X, 1].
    solution, *_ = np.linalg.lstsq(np.hstack([X, np.ones((len(X), 1))]), Y, rcond=None)
    w_ls, b_ls = solution[:-1], solution[-1]
    mse_ls = float(np.mean((X @ w_ls + b_ls - Y) ** 2))

    print(f"{'':14} {'w1':>9} {'w2':>9} {'w3':>9} {'b':>9} {'MSE':>9}")
    print(f"{'true':14} " + " ".join(f"{v:9.4f}" for v in [*TRUE_W, TRUE_B]))
    print(f"{'bpc (MSE fit)':14} " + " ".join(f"{v:9.4f}" for v in [*w, b]) + f" {history['loss'][-1]:9.5f}")
    print(f"{'lstsq':14} " + " ".join(f"{v:9.4f}" for v in [*w_ls, b_ls]) + f" {mse_ls:9.5f}")
    diff = float(np.max(np.abs(np.append(w, b) - solution)))
    print(f"largest difference from the closed form: {diff:.2e}")
    return {"max_abs_diff": diff, "w": w, "b": b, "lstsq": solution, "history": history}


if __name__ == "__main__":
    main()
