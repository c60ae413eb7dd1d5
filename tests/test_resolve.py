"""flatl2o.optimizers.resolve (flatl2o/resolve.py): a name, pretrained:NAME or an export folder -> optax."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

import flatl2o
from flatl2o import optimizers, pretrained


def _first_update(tx):
  params = {"w": jnp.ones(3)}
  grads = {"w": jnp.array([1.0, -2.0, 0.5])}
  updates, _ = tx.update(grads, tx.init(params), params)
  return np.asarray(updates["w"])


class ResolveTest(absltest.TestCase):

  def test_hand_designed_with_and_without_learning_rate(self):
    np.testing.assert_allclose(_first_update(optimizers.resolve("sgd", learning_rate=0.5)),
                               [-0.5, 1.0, -0.25])
    np.testing.assert_allclose(_first_update(optimizers.resolve("adam")),
                               _first_update(optimizers.get("adam")))

  def test_pretrained_and_export_folder_give_the_same_optimizer(self):
    name = pretrained.names()[0]
    np.testing.assert_allclose(_first_update(optimizers.resolve(f"pretrained:{name}")),
                               _first_update(optimizers.resolve(pretrained.path(name))))
    with self.assertRaisesRegex(ValueError, "applies to hand-designed optimizers only"):
      optimizers.resolve(f"pretrained:{name}", learning_rate=0.1)

  def test_export_of_a_fresh_learned_optimizer(self):
    lopt = optimizers.learned("l2o_dm")
    folder = self.create_tempdir().full_path + "/optimizer"
    flatl2o.save_optimizer(folder, lopt, lopt.init(jax.random.key(0)))
    self.assertEqual(_first_update(optimizers.resolve(folder)).shape, (3,))

  def test_bad_spec_is_one_line_naming_what_is_accepted(self):
    for spec, hint in (("lion", "the path of an exported optimizer, or pretrained:NAME"),
                       ("l2o_dm", "is an architecture: meta-train it")):
      with self.assertRaises(ValueError) as e:
        optimizers.resolve(spec)
      self.assertStartsWith(str(e.exception), f"unknown optimizer '{spec}'; accepted: "
                            f"{', '.join(optimizers.names())}, ")
      self.assertIn(hint, str(e.exception))
      self.assertNotIn("\n", str(e.exception))


if __name__ == "__main__":
  absltest.main()
