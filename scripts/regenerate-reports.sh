#!/usr/bin/env bash
# The committed reports under results/, made again with the real commands from this checkout: the
# default sweep, the case's own ImageDataGenerator path, the default sweep under JAX, and the same
# two on the ISBI membrane set
# where ../shared/data/isbi2012-membrane is present. The stores they read back (results/mlflow.db,
# results/optuna.db) are not committed: run this from a checkout without them, so that every point
# trains here, on this machine's kind of CPU (the reports name it in their `device`). The case's own
# path needs the legacy extra: pip install -e '.[legacy]' (the test extra has it too).
set -euo pipefail
cd "$(dirname "$0")/.."
harness=${HARNESS:-.venv/bin/harness}
if ! "$(dirname "$harness")/python" -c "import tf_keras" 2>/dev/null; then
    echo "regenerate-reports: the ImageDataGenerator path needs tf-keras: pip install -e '.[legacy]'" >&2
    exit 2
fi
if [ -e results/mlflow.db ] || [ -e results/optuna.db ]; then
    echo "regenerate-reports: results/ holds stores of earlier sweeps; remove results/mlflow.db, results/optuna.db and results/mlartifacts first" >&2
    exit 2
fi
# --results results: a user's runs go to runs/ (harness.DEFAULT_RESULTS); the reference reports here.
"$harness" sweep --results results
for variant in seed no_featurewise tanh_posted; do      # the report's "Best tuned result per variant"
    "$harness" tune "$variant" --trials 8 --results results
done
"$harness" sweep --set pipeline=imagedatagenerator --results results
KERAS_BACKEND=jax "$harness" sweep --results results       # results/whitening-jax (the test extra has JAX)
if [ -d ../shared/data/isbi2012-membrane ]; then
    "$harness" sweep whitening-isbi --results results
    "$harness" sweep whitening-isbi --set pipeline=imagedatagenerator --results results
fi
