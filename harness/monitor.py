"""Training health, measured once per epoch on one fixed training batch: what a practitioner checks by
hand when a run does not learn. harness/health.py names the causes from these numbers.

Per epoch, under the `health/` prefix (harness/health.py: METRICS):
- grad_finite: 1, or 0 where the gradient is not finite (MLflow logs no NaN);
- grad_norm, and grad_norm_first / grad_norm_last / grad_norm_head: the gradient of the training loss
  on the fixed batch, over all trainable weights and over the first layer with a kernel, the last one
  before the head, and the head (the last one);
- update_ratio: how far the trainable weights moved in the epoch, ||W_end - W_start|| / ||W_start||;
- dead_units: the share of ReLU channels that are never positive on the batch;
- saturated_head: the share of head outputs within 1 % of the head's bounds;
- loss_spread, loss_sign_changes: the epoch's batch losses' standard deviation over their mean
  magnitude, and how often they changed sign;
- batch_loss, trivial_loss: the training loss on the fixed batch, and a constant prediction's loss
  at the batch's foreground fraction on the same targets.

Measured without side effects: the forward pass is stateless (Model.stateless_call), so BatchNorm's
moving statistics and every trained number stay as they would be without it. Speaks keras / keras.ops;
the gradients come from harness/backend.py."""
from __future__ import annotations

import math

import numpy as np

from harness import backend
from harness.health import PREFIX, foreground_constant

SATURATION = 0.01        # an output within this share of the head's range from a bound is saturated


def is_relu(layer) -> bool:
    import keras
    return isinstance(layer, keras.layers.ReLU) or getattr(layer, "activation", None) is keras.activations.relu


def with_activations(model):
    """(a model giving the head's output, then every ReLU layer's, sharing `model`'s weights; whether
    the ReLU outputs are there). A model without symbolic outputs (subclassed) gives its head only."""
    import keras
    relus = [layer for layer in model.layers if is_relu(layer)]
    try:
        return keras.Model(model.inputs, [model.outputs[0]] + [layer.output for layer in relus]), bool(relus)
    except (AttributeError, ValueError, TypeError):
        return model, False


def kernel_groups(model) -> dict[str, list[int]]:
    """Indexes into model.trainable_variables of the first layer with a kernel, the last one before
    the head, and the head."""
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    kernels = [layer for layer in model.layers if getattr(layer, "kernel", None) is not None and layer.trainable_weights]
    named = {"first": kernels[:1], "last": kernels[-2:-1] if len(kernels) >= 3 else [], "head": kernels[-1:]}
    return {name: [index[id(v)] for layer in layers for v in layer.trainable_weights if id(v) in index]
            for name, layers in named.items() if layers}


def norm(tensors) -> float:
    """The L2 norm over several tensors, computed where they live (no copy to the host)."""
    from keras import ops
    return math.sqrt(sum(float(ops.sum(ops.square(ops.cast(t, "float32")))) for t in tensors))


def batch_losses(running_means: list[float]) -> list[float]:
    """Each batch's loss from Keras' running mean over the epoch (the mean after batch k is what
    on_train_batch_end sees), taking the batches as equal in size."""
    losses, previous = [], 0.0
    for k, mean in enumerate(running_means, start=1):
        losses.append(k * mean - (k - 1) * previous)
        previous = mean
    return losses


def loss_spread(losses: list[float]) -> dict[str, float]:
    finite = np.asarray([x for x in losses if math.isfinite(x)], np.float64)
    if len(finite) < 2:
        return {}
    signs = np.sign(finite)
    return {"loss_spread": float(np.std(finite) / max(np.mean(np.abs(finite)), 1e-12)),
            "loss_sign_changes": float(np.sum(signs[1:] != signs[:-1]))}


def health_callback(model, loss_fn, bounds: tuple[float, float], images: np.ndarray, targets: np.ndarray,
                    truth: np.ndarray, async_safe: bool = False):
    """A Keras callback adding the health/ metrics to each epoch's logs. `model`: the inner model
    (under device augmentation fit() trains a wrapper); `images`, `targets`: the fixed batch as
    training feeds it (transformed, not augmented); `truth`: its binary masks."""
    import keras
    from keras import ops

    on_workers = async_safe

    class Health(keras.callbacks.Callback):
        async_safe = on_workers

        def on_train_begin(self, logs=None):
            self.probe, self.has_relus = with_activations(model)
            self.groups = kernel_groups(self.probe)
            self.x, self.y = ops.convert_to_tensor(images, "float32"), ops.convert_to_tensor(targets, "float32")
            constant = np.full(targets.shape, foreground_constant(float(np.mean(truth)), bounds), np.float32)
            self.trivial = float(ops.mean(loss_fn(self.y, ops.convert_to_tensor(constant))))
            self.weights = self.snapshot()

        def snapshot(self) -> list:
            # A copy of each value: a read of a TensorFlow variable or a JAX array already is one,
            # a torch parameter is updated in place.
            return [ops.copy(ops.convert_to_tensor(v)) for v in self.probe.trainable_variables]

        def on_epoch_begin(self, epoch, logs=None):
            self.running = {}             # batch -> Keras' running mean of the loss

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None:
                self.running[batch] = float(loss)     # by index: worker threads may finish out of order

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs.update({PREFIX + k: v for k, v in self.measure().items()})

        def forward(self, values):
            non_trainable = [v.value for v in self.probe.non_trainable_variables]
            outputs, _ = self.probe.stateless_call(values, non_trainable, self.x, training=True)
            outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
            return ops.mean(loss_fn(self.y, outputs[0])), outputs

        def measure(self) -> dict[str, float]:
            value, outputs, grads = backend.value_and_gradients(
                self.forward, [v.value for v in self.probe.trainable_variables])
            found = {"batch_loss": float(value), "trivial_loss": self.trivial, "grad_norm": norm(grads)}
            found["grad_finite"] = float(math.isfinite(found["grad_norm"]))
            found.update(loss_spread(batch_losses([self.running[b] for b in sorted(self.running)])))
            found.update({f"grad_norm_{name}": norm(grads[i] for i in index) for name, index in self.groups.items()})
            weights = self.snapshot()
            moved = norm(ops.subtract(w, b) for w, b in zip(weights, self.weights))
            found["update_ratio"] = moved / max(norm(self.weights), 1e-12) if weights else 0.0
            self.weights = weights
            if not all(bool(ops.all(ops.isfinite(o))) for o in outputs):
                return found      # NaN weights (the loss diverged): units and head say nothing more
            lo, hi = bounds
            tolerance = SATURATION * (hi - lo)
            at_bounds = ops.logical_or(outputs[0] <= lo + tolerance, outputs[0] >= hi - tolerance)
            found["saturated_head"] = float(ops.mean(ops.cast(at_bounds, "float32")))
            if self.has_relus:
                # A channel is alive where it is positive anywhere on the batch.
                alive = [ops.reshape(ops.max(a, axis=tuple(range(len(a.shape) - 1))) > 0, (-1,)) for a in outputs[1:]]
                found["dead_units"] = 1.0 - float(ops.mean(ops.cast(ops.concatenate(alive), "float32")))
            return found

    return Health()
