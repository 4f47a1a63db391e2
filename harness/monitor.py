"""Training health, measured once per epoch: what a practitioner checks by hand when a run does not
learn. harness/health.py names the causes from these numbers.

Per epoch, under the `health/` prefix (harness/health.py: METRICS):
- grad_norm, and grad_norm_first / grad_norm_last / grad_norm_head: the gradient of the training
  loss over all trainable weights and over the first layer with a kernel, the last one before the
  head, and the head (the last one): the root mean square over the epoch's training steps of each
  step's norm, summed inside the compiled train step (a second backward pass per epoch cost more
  than 3 % of training: harness bench, health_overhead);
- grad_finite: 1, or 0 where a step's gradient was not finite (MLflow logs no NaN);
- update_ratio: how far the trainable weights moved in the epoch, ||W_end - W_start|| / ||W_start||;
- loss_spread, loss_sign_changes: the epoch's batch losses' standard deviation over their mean
  magnitude, and how often they changed sign;
- on one fixed training batch (the same every epoch), in one compiled forward pass:
  - dead_units: the share of ReLU channels that are never positive on the batch;
  - saturated_head: the share of head outputs within 1 % of the head's bounds;
  - batch_loss, trivial_loss: the training loss on the batch, and a constant prediction's loss at
    the batch's foreground fraction on the same targets.

Measured without side effects: the forward pass is stateless (Model.stateless_call), and the gradient
sums are the optimizer's own variables, read nowhere else; BatchNorm's moving statistics and every
trained number stay as they would be without them. Speaks keras / keras.ops; the compiling comes from
harness/backend.py."""
from __future__ import annotations

import math

import numpy as np

from harness import backend
from harness.health import PREFIX, foreground_constant

SATURATION = 0.01        # an output within this share of the head's range from a bound is saturated
GROUPS = ("first", "last", "head")   # the kernel groups whose gradient norms are measured apart


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


def kernel_groups(model) -> dict[str, set[int]]:
    """The ids of the trainable variables of the first layer with a kernel, the last one before the
    head, and the head."""
    kernels = [layer for layer in model.layers if getattr(layer, "kernel", None) is not None and layer.trainable_weights]
    named = {"first": kernels[:1], "last": kernels[-2:-1] if len(kernels) >= 3 else [], "head": kernels[-1:]}
    return {name: {id(v) for layer in layers for v in layer.trainable_weights} for name, layers in named.items() if layers}


def measuring_class(optimizer_class, groups: dict[str, set[int]]):
    """A subclass of `optimizer_class` that also sums, inside the compiled train step, each step's
    squared gradient norm over all trainable weights and over each kernel group (`kernel_groups`),
    and counts the steps. The sums are optimizer variables, so a stateless step (JAX) carries them as
    it carries Adam's moments; the health callback reads and zeroes them once per epoch. Keras has no
    hook for a train step's gradients short of subclassing the model, which a user's builder owns."""

    class Measuring(optimizer_class):
        def build(self, variables):
            super().build(variables)
            add_gradient_sums(self)

        def apply(self, grads, trainable_variables=None):
            from keras import ops
            variables = self._trainable_variables if trainable_variables is None else trainable_variables
            squares = {id(v): ops.sum(ops.square(ops.cast(g, "float32"))) for g, v in zip(grads, variables)
                       if g is not None}
            if squares and hasattr(self, "gradient_sums"):
                sums = [sum(squares.values())] + [sum((squares[i] for i in groups.get(name, ()) if i in squares), 0.0)
                                                  for name in GROUPS]
                self.gradient_sums.assign_add(ops.stack([ops.cast(x, "float32") for x in sums]))
                self.gradient_steps.assign_add(1.0)
            return super().apply(grads, trainable_variables)

        def save_own_variables(self, store):
            # Saved as the optimizer it measures (its class's name and module, set below, and its
            # variables without the sums), so keras.saving.load_model reads a saved model back
            # without the harness, optimizer state included.
            sums = (getattr(self, "gradient_sums", None), getattr(self, "gradient_steps", None))
            own = [v for v in self.variables if not any(v is s for s in sums)]
            for i, variable in enumerate(own):
                store[str(i)] = np.asarray(variable.value)

    Measuring.__name__ = Measuring.__qualname__ = optimizer_class.__name__
    Measuring.__module__ = optimizer_class.__module__
    Measuring.measures_gradients = True
    return Measuring


def add_gradient_sums(optimizer) -> None:
    optimizer.gradient_sums = optimizer.add_variable((1 + len(GROUPS),), name="health_gradient_sums")
    optimizer.gradient_steps = optimizer.add_variable((), name="health_gradient_steps")


def measuring_optimizer(optimizer_class, model, **kwargs):
    """An `optimizer_class(**kwargs)` that also sums each train step's gradient norms (measuring_class)."""
    groups = kernel_groups(model)
    optimizer = measuring_class(optimizer_class, groups)(**kwargs)
    optimizer.measured_groups = tuple(name for name in GROUPS if name in groups)
    return optimizer


def measure_gradients_of(optimizer, model) -> None:
    """Make a user's compiled optimizer a measuring one in place (`harness doctor`): its class becomes
    measuring_class of its own, so its configuration, its schedule and its identity are kept. An
    optimizer already built gets its sums now: a train step traced before this will not fill them
    (gradient_norms then finds no step)."""
    if getattr(type(optimizer), "measures_gradients", False):
        return
    groups = kernel_groups(model)
    optimizer.__class__ = measuring_class(type(optimizer), groups)
    optimizer.measured_groups = tuple(name for name in GROUPS if name in groups)
    if optimizer.built:
        add_gradient_sums(optimizer)


def gradient_norms(optimizer) -> dict[str, float]:
    """The epoch's gradient statistics from a measuring_optimizer's sums, which start again at zero;
    {} for no optimizer (not measured)."""
    if optimizer is None:
        return {}
    steps = float(on_host(optimizer.gradient_steps)) if hasattr(optimizer, "gradient_sums") else 0.0
    if steps == 0:
        return {"grad_norm": 0.0, "grad_finite": 1.0}     # never built, or no step had a gradient: nothing trainable
    sums = on_host(optimizer.gradient_sums)
    optimizer.gradient_sums.assign(np.zeros(sums.shape, np.float32))
    optimizer.gradient_steps.assign(0.0)
    norms = np.sqrt(sums / steps)
    found = {"grad_norm": float(norms[0]), "grad_finite": float(np.all(np.isfinite(norms)))}
    found.update({f"grad_norm_{name}": float(norms[1 + GROUPS.index(name)]) for name in optimizer.measured_groups})
    return found


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


def fixed_batch_statistics(probe, has_relus: bool, loss_fn, bounds: tuple[float, float] | None):
    """f(trainable values, non-trainable values, x, y) -> the fixed batch's statistics as tensors, in
    one forward pass compiled by the backend: op by op, the pass cost several times its arithmetic in
    dispatch every epoch (0.14 s against 0.02 s on the default point's model)."""
    from keras import ops
    lo, hi = bounds if bounds is not None else (0.0, 0.0)
    tolerance = SATURATION * (hi - lo)

    def statistics(trainable, non_trainable, x, y):
        outputs, _ = probe.stateless_call(trainable, non_trainable, x, training=True)
        outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        head = outputs[0]
        found = {"batch_loss": ops.mean(loss_fn(y, head)),
                 "finite": ops.all(ops.stack([ops.all(ops.isfinite(o)) for o in outputs]))}
        if bounds is not None:
            found["saturated_head"] = ops.mean(ops.cast(ops.logical_or(head <= lo + tolerance, head >= hi - tolerance),
                                                        "float32"))
        if has_relus:
            # A channel is alive where it is positive anywhere on the batch.
            alive = [ops.reshape(ops.max(a, axis=tuple(range(len(a.shape) - 1))) > 0, (-1,)) for a in outputs[1:]]
            found["dead_units"] = 1.0 - ops.mean(ops.cast(ops.concatenate(alive), "float32"))
        return found

    return backend.compiled(statistics)


def on_host(variable) -> np.ndarray:
    """A copy of a variable's value in host memory. np.asarray of the backend's value: keras.ops'
    convert_to_numpy and Variable.numpy() warn under NumPy 2 (their __array__ takes no `copy`)."""
    return np.asarray(variable.value).astype(np.float64)


def weights_on_host(variables) -> list[np.ndarray]:
    return [on_host(v) for v in variables]


def relative_move(now: list[np.ndarray], before: list[np.ndarray]) -> float:
    """||now - before|| / ||before|| over all the weights; 0 for none."""
    if not now:
        return 0.0
    moved = math.sqrt(sum(float(np.sum(np.square(a - b))) for a, b in zip(now, before)))
    return moved / max(math.sqrt(sum(float(np.sum(np.square(b))) for b in before)), 1e-12)


def health_callback(model, optimizer, loss_fn, bounds: tuple[float, float] | None, images, targets=None,
                    truth=None, async_safe: bool = False, cache: dict | None = None, sink=None):
    """A Keras callback adding the health/ metrics to each epoch's logs. `model`: the inner model
    (under device augmentation fit() trains a wrapper); `optimizer`: its measuring_optimizer (None:
    gradients not measured); `images`, `targets`: the fixed batch as training feeds them (transformed,
    not augmented); `truth`: its binary masks. `images` may instead be a function returning
    (images, targets, truth), or None while no batch is known yet (`harness doctor` sees the batches as
    fit() takes them): the fixed batch is then taken at the first epoch end. `bounds`: the head's
    range (None: not a bounded head, the saturation and the trivial predictor are not measured).
    `sink`: where each epoch's metrics go instead of the epoch's logs (the doctor keeps the user's
    History as it would be)."""
    import keras
    from keras import ops

    on_workers = async_safe
    fixed_batch = images if callable(images) else (lambda: (images, targets, truth))
    # The probe and its compiled pass, kept in `cache` for the same model's next run
    # (harness/compiled.py): a trace of about 0.5 s a point.
    traced = cache if cache is not None else {}

    class Health(keras.callbacks.Callback):
        async_safe = on_workers

        def on_train_begin(self, logs=None):
            if "statistics" not in traced:
                probe, has_relus = with_activations(model)
                traced.update(probe=probe, statistics=fixed_batch_statistics(probe, has_relus, loss_fn, bounds))
            self.probe, self.statistics = traced["probe"], traced["statistics"]
            self.x = None
            self.take_batch()
            self.weights = weights_on_host(self.probe.trainable_variables)

        def take_batch(self) -> None:
            batch = fixed_batch()
            if batch is None or batch[0] is None:
                return
            x, y, known = batch
            self.x, self.y = ops.convert_to_tensor(x, "float32"), ops.convert_to_tensor(y, "float32")
            self.trivial = None
            if bounds is not None:
                constant = np.full(np.shape(y), foreground_constant(float(np.mean(known)), bounds), np.float32)
                self.trivial = float(ops.mean(loss_fn(self.y, ops.convert_to_tensor(constant))))

        def on_epoch_begin(self, epoch, logs=None):
            self.running = {}             # batch -> Keras' running mean of the loss

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None:
                self.running[batch] = float(loss)     # by index: worker threads may finish out of order

        def on_epoch_end(self, epoch, logs=None):
            measured = {PREFIX + k: v for k, v in self.measure().items()}
            if sink is not None:
                sink(epoch, measured)
            elif logs is not None:
                logs.update(measured)

        def measure(self) -> dict[str, float]:
            found = gradient_norms(optimizer)
            weights = weights_on_host(self.probe.trainable_variables)
            found["update_ratio"] = relative_move(weights, self.weights)
            self.weights = weights
            found.update(loss_spread(batch_losses([self.running[b] for b in sorted(self.running)])))
            if self.x is None:
                self.take_batch()
            if self.x is None:
                return found
            forward = self.statistics([v.value for v in self.probe.trainable_variables],
                                      [v.value for v in self.probe.non_trainable_variables], self.x, self.y)
            found["batch_loss"] = float(forward["batch_loss"])
            if self.trivial is not None:
                found["trivial_loss"] = self.trivial
            if bool(forward["finite"]):
                # With NaN weights (the loss diverged) units and head say nothing more.
                found.update({k: float(forward[k]) for k in ("saturated_head", "dead_units") if k in forward})
            return found

    return Health()
