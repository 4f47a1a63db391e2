"""The compiled model the last point trained, kept for the next point with the same graph.

A variant's seeds train the same architecture with the same loss, optimizer and settings; only the
initial weights and the batches differ (and the same holds for variants that differ only in their
transforms or validation). Compiling anew costs every point a trace of the train step,
the scoring pass and the health pass (measured on the default point: first epoch 7.0 s fresh
against 3.8 s reused, later epochs 1.1-1.6 s). So the last compiled model is kept, and the next
point with the same key gets it back with the fresh model's values (the seed's own initial weights,
drawn as they always are) and the optimizer's variables as they were when built: the same graph on
the same values, so the same numbers (tests/test_compiled.py).

One model is kept, the last one: a sweep trains a variant's seeds one after another, and a kept
model holds memory. Keras has no public way to re-initialize a compiled model's variables from a
seed, nor to hand a traced train step new variables, hence this. Speaks keras / keras.ops only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Compiled:
    key: str
    model: object                       # the compiled keras.Model fit() trains
    optimizer: object                   # its optimizer (a measuring one where health is measured)
    loss: object                        # the loss the train step was traced with
    start: list = field(repr=False)     # the optimizer's variables' values as built
    extras: dict = field(default_factory=dict, repr=False)   # what else was compiled for it (health)


_kept: list[Compiled] = []              # at most one


def reusable(builder: str, loss: str) -> bool:
    """Only the harness's own U-Net and built-in losses: their graphs draw no random numbers (the
    augmentation is in the feed). A user's layer or loss may call TensorFlow's stateful random ops,
    whose seeds a traced graph fixes at its first trace: reused, the next point would draw the
    first point's numbers, not its own."""
    return not builder and ":" not in loss


def key_of(raw: dict, head: str, loss: str, input_shape, feed: str, deterministic: bool, backend: str) -> str:
    """What the compiled train step depends on: every setting but the seeds, the variant's head and
    loss, the input shape, the feed, op determinism and the backend. Not the variant's transforms or
    validation: they change the batches and the scored inputs, not the graph, so the case's three
    sigmoid + BCE variants share one compiled model."""
    settings = {section: value for section, value in raw.items() if section != "train"}
    settings["train"] = {k: v for k, v in raw.get("train", {}).items() if k != "seeds"}
    return json.dumps({"settings": settings, "head": head, "loss": loss, "shape": list(input_shape), "feed": feed,
                       "deterministic": bool(deterministic), "backend": backend}, sort_keys=True, default=str)


def optimizer_variables(model, optimizer) -> list:
    """The optimizer's variables and, under mixed precision, the loss-scale wrapper's around them."""
    seen, found = set(), []
    for variable in list(getattr(model.optimizer, "variables", [])) + list(optimizer.variables):
        if id(variable) not in seen:
            seen.add(id(variable))
            found.append(variable)
    return found


def keep(key: str, model, optimizer, loss) -> Compiled:
    """Keep a just-compiled model (its optimizer built, nothing trained yet) for the key's next point."""
    start = [np.asarray(v.value).copy() for v in optimizer_variables(model, optimizer)]
    kept = Compiled(key, model, optimizer, loss, start)
    _kept[:] = [kept]
    return kept


def same_layout(model, fresh) -> bool:
    return (len(model.variables) == len(fresh.variables)
            and all(tuple(a.shape) == tuple(b.shape) and a.dtype == b.dtype
                    for a, b in zip(model.variables, fresh.variables)))


def take(key: str, fresh) -> Compiled | None:
    """The kept model for `key` with `fresh`'s values (weights, BatchNorm statistics, random seed
    states) and its optimizer as built; None where nothing is kept under this key."""
    if not _kept or _kept[0].key != key or not same_layout(_kept[0].model, fresh):
        return None
    kept = _kept[0]
    for variable, value in zip(kept.model.variables, fresh.variables):
        variable.assign(value.value)
    for variable, value in zip(optimizer_variables(kept.model, kept.optimizer), kept.start):
        variable.assign(value)
    return kept


def forget() -> None:
    """Keep nothing: after a point that failed inside fit, whose model's state is not known."""
    _kept.clear()
