"""Learn XOR with a 2-4-1 network (tanh hidden layer, sigmoid output) and
SGD with momentum.

XOR is the classic problem a network without a hidden layer cannot solve.
The output layer gives a logit; `binary_cross_entropy_with_logits` applies
the sigmoid inside the loss (stably), and the printed probabilities apply it
to the predictions.

    python examples/xor.py [--target cpu] [--epochs 300]
"""
import argparse

import numpy as np

import bpc

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
Y = np.array([0, 1, 1, 0], dtype=np.float32)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default=None, choices=bpc.TARGETS, help="default: bpc's default target")
    ap.add_argument("--epochs", type=int, default=300, help="full-batch steps")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    model = bpc.nn.Sequential([
        bpc.nn.Dense(2, 4, "tanh", seed=args.seed, name="hidden"),
        bpc.nn.Dense(4, 1, seed=args.seed + 1, name="out"),
    ])
    history = bpc.fit(model, X, Y, epochs=args.epochs, batch_size=4,
                      optimizer=bpc.optim.SGD(lr=args.lr, momentum=args.momentum),
                      loss="binary_cross_entropy_with_logits", target=args.target,
                      seed=args.seed, progress=False)
    losses = history["loss"]
    for epoch in sorted({0, len(losses) // 4, len(losses) // 2, len(losses) - 1}):
        print(f"epoch {epoch + 1:4d}: loss {losses[epoch]:.4f}   accuracy {history['accuracy'][epoch]:.2f}")

    logits = model.predict(X, target=args.target)[:, 0]
    prob = 1.0 / (1.0 + np.exp(-logits))
    print("\n  x1 x2  target  sigmoid(output)  predicted")
    for (a, b), t, p in zip(X.astype(int), Y.astype(int), prob):
        print(f"  {a:2d} {b:2d}  {t:6d}  {p:15.4f}  {int(p > 0.5):9d}")
    accuracy = bpc.metrics.accuracy(Y.astype(int), (prob > 0.5).astype(int))
    print(f"accuracy {accuracy:.2f}")
    return {"accuracy": accuracy, "probabilities": prob, "history": history}


if __name__ == "__main__":
    main()
