"""One table of losses for `fit`, the command line's models and the
benchmarks: every loss `fit` accepts is accepted by a model file's LOSS and
gives the same value; the graph both build; what each loss's targets and
predictions look like.

Losses' math is tested op by op on every target elsewhere; here only the
interpreter runs, since what is checked is that two paths agree.
"""
import textwrap

import numpy as np
import pytest

import bpc
from bpc import losses, models, nn, train


def test_one_table_and_one_graph_type():
    assert models.LOSSES is train.LOSSES is losses.LOSSES
    assert train.get_loss is losses.get_loss and train.Loss is losses.Loss
    assert models.ModelGraph is losses.ModelGraph is train.TrainGraph
    assert list(losses.LOSSES) == ["softmax_cross_entropy", "binary_cross_entropy_with_logits", "mse"]
    for name, loss in losses.LOSSES.items():
        assert loss.name == name and losses.get_loss(name) is loss


def _model_file(tmp_path, loss):
    path = tmp_path / "loss_model.py"
    path.write_text(textwrap.dedent(f'''
        import bpc
        LOSS = {loss!r}
        def build():
            return bpc.nn.Sequential([bpc.nn.Dense(3, 4, "tanh", seed=0, name="h"),
                                      bpc.nn.Dense(4, 2, seed=1, name="out")])
    '''))
    return path


@pytest.mark.parametrize("name", list(losses.LOSSES))
def test_every_fit_loss_works_in_a_model_file_with_the_same_value(name, tmp_path):
    spec = models.load(str(_model_file(tmp_path, name)))
    assert spec.loss == name
    X, Y = spec.sample_batch(6, seed=1)

    cli = spec.graph()
    fitted = train.build_training_graph(spec.module, X, Y, name)
    # The benchmark's random targets are what fit expects, unchanged.
    assert fitted.Y.dtype == Y.dtype and fitted.Y.shape == Y.shape and np.array_equal(fitted.Y, Y)
    assert (cli.y.shape, cli.y.dtype) == (fitted.y.shape, fitted.y.dtype)
    assert cli.loss_spec is fitted.loss_spec is losses.LOSSES[name]

    cli_loss = bpc.function([cli.x, cli.y], cli.loss, target="interpret")(X, Y)
    fit_loss, fit_eval = bpc.function([fitted.x, fitted.y], [fitted.loss, fitted.eval_loss],
                                      target="interpret")(X, Y)
    assert np.isfinite(cli_loss) and cli_loss == fit_loss == fit_eval   # no dropout: one value

    # ... and the command line's training call runs with it.
    h = bpc.fit(spec.module, X, Y, epochs=1, batch_size=3, loss=spec.loss, target="interpret",
                progress=False)
    assert np.isfinite(h["loss"][0])


def test_a_model_file_refuses_a_loss_fit_does_not_know(tmp_path):
    with pytest.raises(models.ModelError, match="unknown loss 'hinge'; expected one of softmax_cross_entropy"):
        models.load(str(_model_file(tmp_path, "hinge")))
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        losses.get_loss("hinge")


@pytest.mark.parametrize("name, Y, labels, predictions", [
    ("softmax_cross_entropy", np.array([2, 0]), [2, 0], [1, 0]),
    ("softmax_cross_entropy", np.array([[0.1, 0.2, 0.7], [0.8, 0.1, 0.1]]), [2, 0], [1, 0]),
    ("binary_cross_entropy_with_logits", np.array([1.0, 0.0, 1.0]), [[1], [0], [1]], [[1], [0], [0]]),
])
def test_targets_and_predictions_for_metrics(name, Y, labels, predictions):
    loss = losses.LOSSES[name]
    classes = loss.targets == "classes"
    out = bpc.input("o", (None, 3) if classes else (None, 1))
    values = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]) if classes else np.array([[0.5], [-1.0], [-0.2]])
    prepared = loss.prepare(Y, out, np.float32)
    assert loss.has_predictions
    assert loss.labels(prepared).tolist() == labels
    assert loss.predictions(values).tolist() == predictions


def test_values_and_custom_losses_have_no_predictions():
    assert not losses.LOSSES["mse"].has_predictions
    custom = losses.get_loss(lambda o, y: bpc.mean(bpc.square(o - y)))
    assert custom.targets == "custom" and not custom.has_predictions
    with pytest.raises(ValueError, match="custom loss"):
        custom.sample_targets(np.random.default_rng(0), (2,), 3, np.float32)


def test_build_graph_adds_only_what_is_asked():
    model = nn.Sequential([nn.Dense(3, 4, "relu", seed=0, name="h"), nn.Dropout(0.5, seed=1, name="d"),
                           nn.Dense(4, 2, seed=2, name="out")])
    g = losses.build_graph(model, "mse", (3,), "float32")
    assert g.eval_output is None and g.eval_loss is None and g.grads is None and g.Y is None
    assert g.y.shape == (None, 2) and g.loss.shape == ()
    full = losses.build_graph(model, "mse", (3,), "float32", Y=np.zeros((5, 2)), eval_graph=True, l2=0.1,
                              gradients=True)
    assert full.Y.dtype == np.float32 and len(full.grads) == len(full.grad_norms) == len(model.params)
    X, Y = np.ones((5, 3), np.float32), np.zeros((5, 2), np.float32)
    f = bpc.function([full.x, full.y], [full.eval_loss, full.eval_output], target="interpret")
    eval_loss, eval_out = f(X, Y)
    penalty = 0.1 * sum(np.sum(p.value ** 2) for p in model.params if p.ndim >= 2)
    assert eval_loss == pytest.approx(np.mean(eval_out ** 2) + penalty, rel=1e-5)


def test_a_model_output_without_batch_axis_is_a_model_error():
    spec = models.ModelSpec("flat", nn.Sequential([lambda x, training=True: bpc.sum(x)]), (3,))
    with pytest.raises(models.ModelError, match="model 'flat': the model's output must be a tensor "
                                                "with a leading batch axis"):
        spec.graph()
