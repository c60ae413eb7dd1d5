#!/usr/bin/env bash
# Five short meta-trainings whose exports a refactor must leave bit for bit as they were.
#
#   scripts/reference_runs.sh SOURCE_TREE OUT_DIR
#
# Runs experiments.meta_train from SOURCE_TREE (a checkout: `git worktree add /tmp/old REV`)
# for plain, the Hessian trace (alpha 0.5), the Hessian top eigenvalue by Lanczos, the
# entropy term in the first half of each episode (beta 0.3), and the entropy term added to
# the inner loss: 20 meta-steps each on the digits MLP (~15 s each on 2 CPU cores). Writes
# OUT_DIR/sums.txt: sha256 of every export file, metrics.jsonl and run.json. Compare two
# trees with `diff OLD/sums.txt NEW/sums.txt`: the exports and run.json must match; the
# metrics differ only in meta_steps_per_second (a timing).
set -euo pipefail
SRC=$(cd "$1" && pwd); OUT=$2
rm -rf "$OUT"; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
COMMON=(--task=mlp_sigmoid --dataset=digits --num_meta_iterations=20 --validation_every=10
        --num_inner_steps=40 --unroll_length=20 --validation_horizon=40 --checkpoint_every=10)
run() {
  local name=$1; shift
  (cd "$SRC" && PYTHONPATH="$SRC" JAX_PLATFORMS=cpu python -m experiments.meta_train \
      "${COMMON[@]}" "$@" --run_dir="$OUT/$name" > "$OUT/$name.log" 2>&1) || true
}
run none
run hessian --regularizer=hessian --alpha=0.5
run lanczos --regularizer=hessian --hessian_estimator=lanczos
run entropy --regularizer=entropy --beta=0.3 --regularize_when=first_half
run entropy_inner --regularizer=entropy --regularize_inner_loss
cd "$OUT" && sha256sum */optimizer/* */metrics.jsonl */run.json > sums.txt
echo "$OUT/sums.txt"
