"""What names a grid point: its key in the study, and which recorded runs belong to the current grid.

A point is one (variant, seed) of one study. The study's name carries every setting shared by its
points (config.settings_digest); the key carries what tells the points apart: the variant's name,
the seed and the variant's axes, a user loss's "module:function" included. So a redefined variant
is a new point, and a run trained under an old definition never stands for the new one. No
TensorFlow, Optuna or MLflow here: `harness status` and the report use it too.
"""
from __future__ import annotations

from harness.config import AXES, Config, Variant


def point_key(variant: Variant, seed: int) -> str:
    """"name/seed/images=..,masks=..,head=..,loss=..,validation=..": the format of every stored trial."""
    return key_of(variant.name, seed, variant.axes())


def key_of(name: str, seed, axes: dict) -> str:
    return f"{name}/{seed}/" + ",".join(f"{axis}={axes.get(axis)}" for axis in AXES)


def grid_points(cfg: Config) -> dict[str, tuple[Variant, int]]:
    """The config's grid in order, variant by variant: {key: (variant, seed)}."""
    return {point_key(v, s): (v, s) for v in cfg.variants for s in cfg.seeds}


def runs_of_grid(runs, cfg: Config):
    """The rows of `runs` (tracking.load_runs' DataFrame) trained under the grid's current
    definitions: each run's key is rebuilt from its own params (`axis.*`, logged by every sweep), so
    runs logged before keys were tagged are judged the same way."""
    if runs.empty:
        return runs
    current = set(grid_points(cfg))
    keys = [key_of(row.get("variant"), row.get("seed"),
                   {axis: row.get(f"params.axis.{axis}") for axis in AXES}) for _, row in runs.iterrows()]
    return runs[[key in current for key in keys]]
