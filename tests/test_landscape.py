"""Loss-landscape slices, filter-normalised directions and the SLQ spectrum against known answers."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized
from jax.flatten_util import ravel_pytree

from flatl2o import evaluation, flatness, report, tasks
from tests.test_cli import run_binary
jax.config.update("jax_enable_x64", False)

try:
  import matplotlib  # pylint: disable=unused-import
  HAVE_MATPLOTLIB = True
except ImportError:
  HAVE_MATPLOTLIB = False


def _quadratic(seed=0):
  """f(x) = 0.5 x^T A x + b^T x on a {"w": [3, 4], "b": [4]} pytree (16 coordinates).

  A is symmetric and indefinite (the slices need no minimum). Returns f, the
  params, and A, b, unravel in float64 for the NumPy reference.
  """
  rng = np.random.default_rng(seed)
  params = {"w": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32),
            "b": jnp.asarray(rng.standard_normal(4), jnp.float32)}
  flat, unravel = ravel_pytree(params)
  m = rng.standard_normal((flat.size, flat.size))
  a = (m + m.T) / 2
  b = rng.standard_normal(flat.size)
  a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)

  def f(p):
    x = ravel_pytree(p)[0]
    return 0.5 * x @ a32 @ x + b32 @ x

  return f, params, a, b


def _flat64(tree):
  return np.asarray(ravel_pytree(tree)[0], np.float64)


def _directions(params, count):
  # Plain Gaussian directions on every leaf (biases too), so the closed form sees every coordinate.
  keys = jax.random.split(jax.random.key(7), count)
  return [flatness.normal_like(k, params) for k in keys]


class QuadraticSliceTest(parameterized.TestCase):

  def test_1d_slice_is_the_closed_form(self):
    f, params, a, b = _quadratic()
    (d,) = _directions(params, 1)
    x, dv = _flat64(params), _flat64(d)
    alphas = np.linspace(-2.0, 1.5, 9)
    g = a @ x + b
    expected = (0.5 * x @ a @ x + b @ x) + alphas * (g @ dv) + 0.5 * alphas ** 2 * (dv @ a @ dv)
    got = flatness.loss_slice_1d(f, params, d, jnp.asarray(alphas))
    self.assertEqual(got.shape, (9,))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)

  def test_2d_slice_is_the_closed_form(self):
    f, params, a, b = _quadratic(seed=1)
    d1, d2 = _directions(params, 2)
    x, u, v = _flat64(params), _flat64(d1), _flat64(d2)
    alphas = np.linspace(-1.0, 2.0, 5)   # not the betas' length nor range: a swap shows
    betas = np.linspace(-0.5, 0.25, 7)
    g = a @ x + b
    al, be = alphas[:, None], betas[None, :]
    expected = ((0.5 * x @ a @ x + b @ x) + al * (g @ u) + be * (g @ v)
                + 0.5 * (al ** 2 * (u @ a @ u) + 2 * al * be * (u @ a @ v) + be ** 2 * (v @ a @ v)))
    got = flatness.loss_slice_2d(f, params, d1, d2, alphas, betas)
    self.assertEqual(got.shape, (5, 7))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)

  def test_jit_and_chunks_give_the_same_values(self):
    f, params, _, _ = _quadratic()
    d1, d2 = _directions(params, 2)
    alphas, betas = jnp.linspace(-1.0, 1.0, 5), jnp.linspace(-1.0, 1.0, 3)
    eager = flatness.loss_slice_1d(f, params, d1, alphas)
    jitted = jax.jit(lambda p, a: flatness.loss_slice_1d(f, p, d1, a))(params, alphas)
    chunked = flatness.loss_slice_1d(f, params, d1, alphas, chunk_size=2)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    np.testing.assert_allclose(chunked, eager, rtol=1e-6)
    np.testing.assert_allclose(
        flatness.loss_slice_2d(f, params, d1, d2, alphas, betas, chunk_size=4),
        flatness.loss_slice_2d(f, params, d1, d2, alphas, betas), rtol=1e-6)

  def test_a_bf16_leaf_keeps_its_dtype(self):
    params = {"w": jnp.ones((2, 3), jnp.bfloat16)}
    seen = []

    def f(p):
      seen.append(p["w"].dtype)
      return jnp.sum(p["w"].astype(jnp.float32) ** 2)

    d = flatness.filter_normalized_direction(jax.random.key(0), params)
    self.assertEqual(d["w"].dtype, jnp.bfloat16)
    got = flatness.loss_slice_1d(f, params, d, jnp.array([0.0]))
    self.assertEqual(seen, [jnp.bfloat16])
    self.assertAlmostEqual(float(got[0]), 6.0)


def _network_params(seed=0):
  """A Conv kernel [h, w, in, out], a Dense kernel [in, out] and their biases, as Flax nests them."""
  rng = np.random.default_rng(seed)
  scale = lambda shape: rng.uniform(0.1, 3.0, shape[-1])  # filters of different norms
  conv = rng.standard_normal((3, 3, 2, 4)) * scale((4,))
  dense = rng.standard_normal((5, 3)) * scale((3,))
  return {"params": {"Conv_0": {"kernel": jnp.asarray(conv, jnp.float32),
                                "bias": jnp.asarray(rng.standard_normal(4), jnp.float32)},
                     "Dense_0": {"kernel": jnp.asarray(dense, jnp.float32),
                                 "bias": jnp.asarray(rng.standard_normal(3), jnp.float32)}}}


class FilterNormalizedDirectionTest(parameterized.TestCase):

  @parameterized.named_parameters(("conv", "Conv_0"), ("dense", "Dense_0"))
  def test_each_filter_has_the_params_filter_norm(self, layer):
    params = _network_params()
    d = flatness.filter_normalized_direction(jax.random.key(3), params)
    kernel = np.asarray(params["params"][layer]["kernel"], np.float64)
    direction = np.asarray(d["params"][layer]["kernel"], np.float64)
    self.assertEqual(direction.shape, kernel.shape)
    for j in range(kernel.shape[-1]):
      self.assertAlmostEqual(np.linalg.norm(direction[..., j]), np.linalg.norm(kernel[..., j]),
                             delta=1e-5 * np.linalg.norm(kernel[..., j]))
    # Random, not the params rescaled: far from parallel to the kernel.
    cosine = (direction.ravel() @ kernel.ravel()) / (np.linalg.norm(direction)
                                                     * np.linalg.norm(kernel))
    self.assertLess(abs(cosine), 0.9)
    np.testing.assert_array_equal(d["params"][layer]["bias"], 0.0)

  def test_include_biases_rescales_them_as_a_whole_and_keeps_the_kernels(self):
    params = _network_params()
    plain = flatness.filter_normalized_direction(jax.random.key(3), params)
    with_biases = flatness.filter_normalized_direction(jax.random.key(3), params,
                                                       include_biases=True)
    for layer in ("Conv_0", "Dense_0"):
      np.testing.assert_array_equal(with_biases["params"][layer]["kernel"],
                                    plain["params"][layer]["kernel"])
      bias = np.asarray(params["params"][layer]["bias"], np.float64)
      got = np.asarray(with_biases["params"][layer]["bias"], np.float64)
      self.assertAlmostEqual(np.linalg.norm(got), np.linalg.norm(bias), places=5)
      self.assertGreater(np.abs(got).min(), 0.0)

  def test_a_zero_filter_gets_a_zero_direction(self):
    params = {"kernel": jnp.zeros((4, 2)).at[:, 1].set(1.0)}
    d = flatness.filter_normalized_direction(jax.random.key(0), params)["kernel"]
    np.testing.assert_array_equal(d[:, 0], 0.0)
    self.assertAlmostEqual(float(jnp.linalg.norm(d[:, 1])), 2.0, places=5)

  def test_leaf_i_is_the_draw_of_split_key_i_rescaled(self):
    params = _network_params()
    key = jax.random.key(11)
    leaves = jax.tree.leaves(params)
    keys = jax.random.split(key, len(leaves))
    got = jax.tree.leaves(flatness.filter_normalized_direction(key, params))
    for k, x, d in zip(keys, leaves, got):
      x = np.asarray(x, np.float64)
      if x.ndim <= 1:
        np.testing.assert_array_equal(d, 0.0)
        continue
      raw = np.asarray(jax.random.normal(k, x.shape, jnp.float32), np.float64)
      axes = tuple(range(x.ndim - 1))
      expected = raw * np.sqrt((x ** 2).sum(axes)) / np.sqrt((raw ** 2).sum(axes))
      np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-6)

  def test_leaves_of_the_same_shape_get_different_draws(self):
    params = {"a": jnp.ones((3, 4)), "b": jnp.ones((3, 4))}
    d = flatness.filter_normalized_direction(jax.random.key(0), params)
    self.assertGreater(float(jnp.abs(d["a"] - d["b"]).max()), 0.1)

  def test_same_key_same_direction_other_key_other_direction(self):
    params = _network_params()
    draw = lambda seed: _flat64(flatness.filter_normalized_direction(jax.random.key(seed), params))
    np.testing.assert_array_equal(draw(5), draw(5))
    self.assertGreater(np.abs(draw(5) - draw(6)).max(), 0.1)
    # Under jit as well: the draw is a function of the key only.
    jitted = jax.jit(flatness.filter_normalized_direction)(jax.random.key(5), params)
    np.testing.assert_allclose(_flat64(jitted), draw(5), rtol=1e-6)


class BadInputTest(parameterized.TestCase):

  def _call(self, direction=None, alphas=(0.0, 1.0), params=None):
    params = _network_params() if params is None else params
    if direction is None:
      direction = flatness.filter_normalized_direction(jax.random.key(0), params)
    return flatness.loss_slice_1d(lambda p: 0.0, params, direction, alphas)

  def test_shape_mismatch_names_the_leaf_and_shapes(self):
    direction = flatness.filter_normalized_direction(jax.random.key(0), _network_params())
    direction["params"]["Dense_0"]["kernel"] = jnp.zeros((3, 5))
    with self.assertRaisesRegex(ValueError, r"^direction leaf \['params'\]\['Dense_0'\]"
                                r"\['kernel'\] has shape \(3, 5\), params' has \(5, 3\)$"):
      self._call(direction)

  def test_missing_leaf_is_named(self):
    direction = flatness.filter_normalized_direction(jax.random.key(0), _network_params())
    del direction["params"]["Conv_0"]["bias"]
    with self.assertRaisesRegex(ValueError, r"^direction does not have the tree structure of "
                                r"params: leaf \['params'\]\['Conv_0'\]\['bias'\] is missing$"):
      self._call(direction)

  def test_the_second_2d_direction_is_checked_by_name(self):
    params = _network_params()
    d = flatness.filter_normalized_direction(jax.random.key(0), params)
    bad = jax.tree.map(lambda x: x, d)
    bad["params"]["Conv_0"]["bias"] = jnp.zeros(5)
    with self.assertRaisesRegex(ValueError, r"^d2 leaf \['params'\]\['Conv_0'\]\['bias'\] has "
                                r"shape \(5,\), params' has \(4,\)$"):
      flatness.loss_slice_2d(lambda p: 0.0, params, d, bad, [0.0], [0.0])

  @parameterized.named_parameters(
      ("two_d", np.zeros((2, 2)), "alphas must be a non-empty 1-D array, got shape (2, 2)"),
      ("scalar", 0.5, "alphas must be a non-empty 1-D array, got shape ()"),
      ("empty", np.zeros(0), "alphas must be a non-empty 1-D array, got shape (0,)"),
      ("nan", [0.0, float("nan")], "alphas must be finite numbers, got [0.0, nan]"),
      ("inf", np.array([float("inf")]), "alphas must be finite numbers, got [inf]"),
  )
  def test_bad_alphas(self, alphas, message):
    with self.assertRaises(ValueError) as raised:
      self._call(alphas=alphas)
    self.assertEqual(str(raised.exception), message)

  def test_bad_betas_and_chunk_size(self):
    params = {"w": jnp.ones((2, 2))}
    d = flatness.filter_normalized_direction(jax.random.key(0), params)
    with self.assertRaisesRegex(ValueError, r"^betas must be finite numbers"):
      flatness.loss_slice_2d(lambda p: 0.0, params, d, d, [0.0], [float("nan")])
    with self.assertRaisesRegex(ValueError, r"^chunk_size must be a positive integer, got 0$"):
      flatness.loss_slice_1d(lambda p: 0.0, params, d, [0.0], chunk_size=0)

  def test_integer_leaf_is_named(self):
    with self.assertRaisesRegex(ValueError, r"^params leaf \['step'\] has dtype int32; "
                                "directions need floating-point leaves$"):
      flatness.filter_normalized_direction(jax.random.key(0),
                                           {"step": jnp.zeros((2, 2), jnp.int32)})


class HessianSpectrumTest(absltest.TestCase):

  def test_ritz_values_and_weights_of_a_quadratic(self):
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    eig = np.array([-1.0, 0.5, 1.0, 2.0, 3.0, 5.0])
    a = jnp.asarray((q * eig) @ q.T, jnp.float32)
    f = lambda p: 0.5 * p["x"] @ a @ p["x"]
    params = {"x": jnp.ones(6)}
    key = jax.random.key(4)
    spectrum = flatness.hessian_spectrum(f, params, key, num_iters=20, num_probes=3)
    self.assertEqual(spectrum.ritz_values.shape, (18,))  # 3 probes x 6 (capped at the dimension)
    self.assertAlmostEqual(float(spectrum.weights.sum()), 1.0, places=5)
    # A full run per probe: every eigenvalue is a Ritz value of every probe.
    for p in range(3):
      np.testing.assert_allclose(np.sort(spectrum.ritz_values[6 * p:6 * (p + 1)]), eig,
                                 atol=1e-4)
    # Quadrature of t -> t: sum_k w_k theta_k = mean over probes of z^T A z / n, exactly.
    probes = [jax.random.rademacher(k, (6,), jnp.float32) for k in jax.random.split(key, 3)]
    expected = np.mean([float(z @ a @ z) / 6 for z in probes])
    self.assertAlmostEqual(float(spectrum.weights @ spectrum.ritz_values), expected, places=4)

  def test_checks(self):
    with self.assertRaisesRegex(ValueError, "^num_probes must be a positive integer, got 0$"):
      flatness.hessian_spectrum(lambda p: 0.0, {"x": jnp.ones(2)}, jax.random.key(0),
                                num_probes=0)


class LossLandscapeTest(absltest.TestCase):

  def test_quadratic_task_slices_every_leaf_and_the_grids_agree(self):
    task = tasks.get("quadratic")
    params = task.init(jax.random.key(0))
    slices = evaluation.loss_landscape(task, params, jax.random.key(1))
    self.assertEqual(slices["alphas"].shape, (41,))
    self.assertEqual(slices["loss_2d"].shape, (21, 21))
    self.assertEqual(slices["alphas"][20], 0.0)
    centre = float(task.loss(params, task.fixed_batch(evaluation.FLATNESS_BATCH)))
    self.assertAlmostEqual(slices["loss_1d"][20], centre, delta=1e-5 * centre)
    # Its only leaf is a vector: moved anyway (else the slice would be flat).
    self.assertGreater(np.ptp(slices["loss_1d"]), 0.1 * centre)
    # The 2-D rows run along the 1-D direction: its beta = 0 column is the 1-D curve.
    np.testing.assert_allclose(slices["loss_2d"][:, 10], slices["loss_1d"][::2], rtol=1e-5)


@absltest.skipIf(not HAVE_MATPLOTLIB, "matplotlib is not installed")
class PlotTest(absltest.TestCase):

  def _assert_png(self, folder, name):
    with open(os.path.join(folder, name), "rb") as f:
      self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
    self.assertEmpty([n for n in os.listdir(folder) if n.startswith(".tmp")])

  def test_landscape_and_spectrum_plots_write_pngs(self):
    folder = self.create_tempdir().full_path
    alphas = np.linspace(-1, 1, 11)
    betas = np.linspace(-1, 1, 7)
    surface = 1.0 + alphas[:, None] ** 2 + 2 * betas[None, :] ** 2
    self.assertTrue(report.plot_landscape_1d(os.path.join(folder, "a.png"), alphas,
                                             {"adam": alphas ** 2 + 1, "l2o": 2 * alphas ** 2},
                                             title="1-D"))
    self.assertTrue(report.plot_landscape_2d(os.path.join(folder, "b.png"), alphas, betas,
                                             {"adam": surface, "l2o": 2 * surface}, title="2-D"))
    self.assertTrue(report.plot_spectrum(os.path.join(folder, "c.png"),
                                         {"adam": ([0.0, 1.0, 4.0], [0.5, 0.3, 0.2]),
                                          "l2o": (np.array([0.1, 2.0]), np.array([0.9, 0.1]))},
                                         title="spectrum"))
    for name in ("a.png", "b.png", "c.png"):
      self._assert_png(folder, name)

  def test_shapes_are_checked_before_drawing(self):
    path = os.path.join(self.create_tempdir().full_path, "x.png")
    alphas, betas = np.linspace(-1, 1, 5), np.linspace(-1, 1, 3)
    with self.assertRaisesRegex(ValueError, r"^surface 'adam' has shape \(3, 5\), expected "
                                r"\(len\(alphas\), len\(betas\)\) = \(5, 3\)$"):
      report.plot_landscape_2d(path, alphas, betas, {"adam": np.zeros((3, 5))})
    with self.assertRaisesRegex(ValueError, r"^curve 'adam' has shape \(4,\), alphas \(5,\)$"):
      report.plot_landscape_1d(path, alphas, {"adam": np.zeros(4)})
    self.assertFalse(os.path.exists(path))


class SlqDensityTest(absltest.TestCase):

  def test_density_integrates_to_one_and_peaks_at_the_nodes(self):
    grid = np.linspace(-5, 10, 20001)
    density = report.slq_density(grid, [0.0, 4.0], [3.0, 1.0], sigma=0.2)  # weights normalised
    self.assertAlmostEqual(np.trapezoid(density, grid), 1.0, places=6)
    at = lambda t: density[np.argmin(np.abs(grid - t))]
    self.assertAlmostEqual(at(0.0), 0.75 / (0.2 * np.sqrt(2 * np.pi)), places=4)
    self.assertAlmostEqual(at(4.0), 0.25 / (0.2 * np.sqrt(2 * np.pi)), places=4)




@pytest.mark.slow  # the evaluate binary, twice
class EvaluateLandscapeBinaryTest(absltest.TestCase):

  def test_landscape_flag_writes_slices_centred_on_the_final_loss(self):
    out = self.create_tempdir().full_path
    proc = run_binary("experiments.evaluate", "--optimizer=adam", "--num_steps=20",
                      "--eval_every=10", "--seeds=0", "--landscape", f"--out_dir={out}")
    self.assertEqual(proc.returncode, 0, proc.stderr)
    self.assertIn("landscape_1d.png, landscape_2d.png", proc.stdout)
    with open(os.path.join(out, "summary.json")) as f:
      summary = json.load(f)
    landscape = summary["landscape"]
    self.assertLen(landscape["loss"], 41)
    self.assertEqual(landscape["alphas"][20], 0.0)
    self.assertEqual((landscape["seed"], landscape["step"]), (0, 20))
    final_loss = summary["final"][0]["flatness_batch_loss"]  # same batch, final parameters
    self.assertAlmostEqual(landscape["loss"][20], final_loss, delta=1e-5 * final_loss)
    self.assertGreater(min(landscape["loss"][0], landscape["loss"][-1]), final_loss)
    if HAVE_MATPLOTLIB:
      for name in ("landscape_1d.png", "landscape_2d.png"):
        self.assertTrue(os.path.exists(os.path.join(out, name)), name)
    # The flag adds outputs only: the same folder takes a rerun without it, which drops them.
    proc = run_binary("experiments.evaluate", "--optimizer=adam", "--num_steps=20",
                      "--eval_every=10", "--seeds=0", f"--out_dir={out}")
    self.assertEqual(proc.returncode, 0, proc.stderr)
    self.assertFalse(os.path.exists(os.path.join(out, "landscape_1d.png")))
    with open(os.path.join(out, "summary.json")) as f:
      self.assertNotIn("landscape", json.load(f))


if __name__ == "__main__":
  absltest.main()
