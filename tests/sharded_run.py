"""Runs the small meta-training of `tests/test_scale.py` in its own process.

  python tests/sharded_run.py --mode=MODE --out=FILE.npz [--run_dir=DIR]
      [--coordinator=HOST:PORT --process_id=I] [--estimator=truncated|pes|es]

Modes: `one` (num_devices=1), `eight` (num_devices=8, interrupted after
meta-step 5 and resumed from the run directory), `hosts` (two processes of four
devices each, joined through jax.distributed). The caller sets XLA_FLAGS to
give the process its virtual CPU devices. Writes the last meta-parameters.
"""

import argparse
import sys

import numpy as np


def config(num_devices, **kwargs):
  from flatl2o import meta  # pylint: disable=g-import-not-at-top
  return meta.MetaTrainConfig(
      unroll_length=5, num_inner_steps=10, meta_batch_size=8, num_meta_iterations=10,
      validation_every=5, validation_horizon=40, validation_seeds=2, log_every=5,
      checkpoint_every=5, meta_learning_rate=1e-2, num_devices=num_devices, **kwargs)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--mode", required=True, choices=("one", "eight", "hosts"))
  parser.add_argument("--out", required=True)
  parser.add_argument("--run_dir")
  parser.add_argument("--coordinator")
  parser.add_argument("--process_id", type=int)
  parser.add_argument("--estimator", default="truncated")
  args = parser.parse_args()
  if args.mode == "hosts":
    from experiments import _cli  # pylint: disable=g-import-not-at-top
    _cli.initialize_distributed(args.coordinator, 2, args.process_id)
  import jax  # pylint: disable=g-import-not-at-top
  from flatl2o import meta, optimizers, tasks  # pylint: disable=g-import-not-at-top
  task = tasks.get("mlp_sigmoid", batch_size=32)
  lopt = optimizers.L2ODM()
  estimator = {"estimator": args.estimator, "es_pairs": 2}
  run_config = lambda devices: config(devices, **estimator)
  if args.mode == "one":
    result = meta.meta_train(lopt, task, run_config(1))
  elif args.mode == "eight":
    assert jax.device_count() == 8, jax.devices()
    try:
      meta.meta_train(lopt, task, run_config(8), run_dir=args.run_dir, should_stop=lambda: True)
      sys.exit("should_stop did not stop the run")
    except meta.MetaTrainingInterrupted as e:
      assert e.iteration == 1, e.iteration
    result = meta.meta_train(lopt, task, run_config(8), run_dir=args.run_dir)
    assert result.resumed_from == 1, result.resumed_from
    try:  # 12 optimizees do not split over 8 devices
      meta.meta_train(lopt, task, meta.MetaTrainConfig(meta_batch_size=12, num_devices=8))
      sys.exit("a meta-batch of 12 was split over 8 devices")
    except ValueError as e:
      print(e)
  else:
    assert jax.device_count() == 8 and jax.local_device_count() == 4, jax.devices()
    result = meta.meta_train(lopt, task, run_config(None), run_dir=args.run_dir)
  np.savez(args.out, *[np.asarray(x) for x in jax.tree.leaves(result.last_meta_params)])
  print("history", [round(h["meta_loss"], 6) for h in result.history],
        "collapsed", result.collapsed)


if __name__ == "__main__":
  main()
