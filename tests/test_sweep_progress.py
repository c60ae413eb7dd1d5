"""The sweep's ETA (stage 1): a slot per expected point, renamed to the cell that fills it,
the rest skipped when a term's sweep stops; meta-training stubbed (hand-made cells)."""

import tempfile
from unittest import mock

from absl.testing import absltest

from flatl2o import study
from flatl2o.study import config as study_config
from flatl2o.study import driver
from flatl2o.study.progress import Progress

PRESET = study.Preset(
    meta_seeds=(0, 1), num_meta_iterations=100, unroll_length=5, num_inner_steps=10,
    meta_batch_size=1, validation_every=50, validation_seeds=1, adam_grid=(0.01,),
    sgd_grid=(0.1,), tuning_seeds=1, test_seeds=1, test_horizon=10, eval_every=10,
    flatness_batch=8, trace_probes=1, lanczos_iters=2, coefficients="sweep", sweep_only=True,
    sweep_seeds=(100, 101), sweep_range=(1.0, 1e5), models=("l2o_dm",),
    optimizees=(study.SEEN,), baselines=())
COLLAPSES_AT = {"hessian": 100.0, "entropy": 10.0}  # where each term's (stub) sweep collapses


class SweepProgressTest(absltest.TestCase):

  def test_rename_keeps_the_place_in_the_plan(self):
    tracker = Progress([("a", "none", 10), ("slot", "hessian", 10), ("c", "none", 10)],
                       {"none": 0.1, "hessian": 0.2})
    tracker.rename("slot", "cell")
    self.assertEqual(tracker.order, ["a", "cell", "c"])
    self.assertEqual(tracker.items["cell"].kind, "hessian")
    with self.assertRaisesRegex(ValueError, "cannot rename plan item 'slot'"):
      tracker.rename("slot", "other")

  def test_each_point_fills_a_slot_and_a_stopped_sweep_skips_the_rest(self):
    seen = []  # (cell name, was it a plan item, unfinished plan items left)

    def fake_cell(cells, config, task, model, kind, coefficient, seed, should_stop,
                  num_meta_iterations=None, log=print, *, tracker=None, **kwargs):
      del cells, config, task, model, should_stop, num_meta_iterations, log, kwargs
      name = f"l2o_dm-{study.regularizer_label(kind, coefficient)}-s{seed}"
      planned = tracker is not None and name in tracker.items
      if planned:
        tracker.start(name)
        tracker.finish(name)
      left = [n for n in tracker.order if not tracker.items[n].finished]
      seen.append((name, planned, len(left)))
      collapsed = kind != "none" and coefficient >= COLLAPSES_AT[kind]
      return {"name": name, "best_validation_accuracy": 0.9, "collapsed": collapsed,
              "best_meta_step": -1 if collapsed else 100, "grad_ratio": {"ratio": 0.5}}

    lines = []
    with mock.patch.dict(study_config.PRESETS, {"stub_sweep": PRESET}), \
        mock.patch.object(driver, "meta_train_cell", fake_cell), \
        mock.patch.object(driver.sweep_lib, "load", lambda path=None: {"sweep_terms": {
            "hessian": {"points": [{}] * 4}}}):  # shipped: hessian 4 points, entropy none
      study.run(study.StudyConfig(preset="stub_sweep"), tempfile.mkdtemp(), log=lines.append)
    # Plan: plain x 2 seeds, hessian 4 points x 2, entropy 6 decades (1 .. 1e5) x 2 = 22.
    # hessian runs 1, 10, 100 (collapses): 3 points; entropy 1, 10: 2 points.
    names = [n for n, _, _ in seen]
    self.assertEqual(names, [
        "l2o_dm-none-s100", "l2o_dm-none-s101",
        "l2o_dm-hessian-1-s100", "l2o_dm-hessian-1-s101", "l2o_dm-hessian-10-s100",
        "l2o_dm-hessian-10-s101", "l2o_dm-hessian-100-s100", "l2o_dm-hessian-100-s101",
        "l2o_dm-entropy-1-s100", "l2o_dm-entropy-1-s101", "l2o_dm-entropy-10-s100",
        "l2o_dm-entropy-10-s101"])
    self.assertTrue(all(planned for _, planned, _ in seen))  # every cell was a plan item
    left = {n: k for n, _, k in seen}
    self.assertEqual(left["l2o_dm-hessian-100-s101"], 14)  # 22 - 8: hessian's 4th point too
    self.assertEqual(left["l2o_dm-entropy-1-s100"], 11)  # ... skipped once hessian stopped
    self.assertEqual(left["l2o_dm-entropy-10-s101"], 8)  # entropy's 4 decades beyond
    summaries = [line for line in lines if "stage 1 (sweep): hessian: collapses" in line]
    self.assertLen(summaries, 1)
    self.assertIn("ETA for the whole run", summaries[0])


if __name__ == "__main__":
  absltest.main()
