"""Backpropagation by hand, and by bpc, on a one-path sigmoid network.

    x = 1, target y = 1, w1 = 1, b1 = 0, w2 = -1, b2 = 0

    z1 = w1*x + b1 = 1                     o1 = sigmoid(z1) = 0.731059
    z2 = w2*o1 + b2 = -0.731059            o2 = sigmoid(z2) = 0.324962
    loss = (o2 - y)^2 = 0.455676

(o2 is sigmoid(-0.7311), not sigmoid(-1): the second layer sees o1.)

The chain rule, one factor at a time (sigmoid'(z) = o (1 - o)):

    dL/do2 = 2 (o2 - y)                     = -1.350075
    do2/dz2 = o2 (1 - o2)                   =  0.219362
    dL/dz2 = dL/do2 * do2/dz2               = -0.296155
    dL/dw2 = dL/dz2 * o1                    = -0.216507
    dL/db2 = dL/dz2                         = -0.296155
    dL/do1 = dL/dz2 * w2                    =  0.296155
    do1/dz1 = o1 (1 - o1)                   =  0.196612
    dL/dz1 = dL/do1 * do1/dz1               =  0.058228
    dL/dw1 = dL/dz1 * x                     =  0.058228
    dL/db1 = dL/dz1                         =  0.058228

Run it to see bpc derive the same numbers symbolically, print the gradient
graph as text and DOT (worked_example_grad.dot), and take a few steps of
gradient descent with a hand-written update, then the same steps with
bpc.optim.SGD.
"""
import argparse

import numpy as np

import bpc


def build():
    x = bpc.input("x", (), dtype="float64")
    y = bpc.input("y", (), dtype="float64")
    w1 = bpc.param("w1", np.array(1.0), dtype="float64")
    b1 = bpc.param("b1", np.array(0.0), dtype="float64")
    w2 = bpc.param("w2", np.array(-1.0), dtype="float64")
    b2 = bpc.param("b2", np.array(0.0), dtype="float64")
    o1 = bpc.sigmoid(w1 * x + b1)
    o2 = bpc.sigmoid(w2 * o1 + b2)
    loss = bpc.square(o2 - y)
    return (x, y), (w1, b1, w2, b2), (o1, o2, loss)


def by_hand(x, y, w1, b1, w2, b2):
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))
    o1 = sig(w1 * x + b1)
    o2 = sig(w2 * o1 + b2)
    dz2 = 2 * (o2 - y) * o2 * (1 - o2)
    dz1 = dz2 * w2 * o1 * (1 - o1)
    return {"o1": o1, "o2": o2, "loss": (o2 - y) ** 2,
            "w1": dz1 * x, "b1": dz1, "w2": dz2 * o1, "b2": dz2}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="interpret", choices=bpc.TARGETS)
    ap.add_argument("--steps", type=int, default=5, help="gradient-descent steps to take")
    ap.add_argument("--lr", type=float, default=1.0)
    ap.add_argument("--dot", default="worked_example_grad.dot", help="where to write the gradient graph")
    args = ap.parse_args(argv)

    (x, y), params, (o1, o2, loss) = build()
    grads = bpc.grad(loss, list(params))
    f = bpc.function([x, y], [o1, o2, loss] + grads, target=args.target)
    values = f(1.0, 1.0)
    hand = by_hand(1.0, 1.0, *(float(p.value) for p in params))

    print(f"{'quantity':10} {'bpc':>12} {'by hand':>12}")
    for name, v in zip(["o1", "o2", "loss"] + [f"dL/d{p.name}" for p in params], values):
        key = name.split("/d")[-1]
        print(f"{name:10} {float(v):12.6f} {hand[key]:12.6f}")
        assert abs(float(v) - hand[key]) < 1e-9, name

    print("\nThe derived gradient graph (' marks nodes made by bpc.grad), after simplification:")
    print(bpc.to_text([loss] + grads, optimize=True))
    bpc.to_dot([loss] + grads, path=args.dot, feed={x: 1.0, y: 1.0},
               grads=dict(zip(params, grads)), title="worked example: loss and its gradients")
    print(f"\nwrote {args.dot} (render: dot -Tsvg {args.dot} -o grad.svg)")

    initial = [p.value.copy() for p in params]
    step = bpc.function([x, y], loss, target=args.target,
                        updates={p: p - args.lr * g for p, g in zip(params, grads)})
    print(f"\n{args.steps} steps of gradient descent (lr={args.lr}):")
    by_hand_update = []
    for i in range(args.steps):
        by_hand_update.append(float(step(1.0, 1.0)))
        print(f"  step {i}: loss {by_hand_update[-1]:.6f}")

    # The same steps with bpc.optim.SGD, from the same starting point: an
    # optimizer only writes the update expressions, so it retraces the
    # hand-written update exactly.
    for p, v in zip(params, initial):
        p.value = v
    sgd = bpc.optim.SGD(lr=args.lr)
    sgd_step = bpc.function([x, y], loss, target=args.target, updates=sgd.updates(loss, list(params)))
    print(f"\nthe same with bpc.optim.SGD(lr={args.lr}):")
    for i in range(args.steps):
        value = float(sgd_step(1.0, 1.0))
        print(f"  step {i}: loss {value:.6f}   (hand-written update: {by_hand_update[i]:.6f})")
        assert abs(value - by_hand_update[i]) < 1e-12, i
    return {"losses": by_hand_update, "params": {p.name: float(p.value) for p in params}}


if __name__ == "__main__":
    main()
