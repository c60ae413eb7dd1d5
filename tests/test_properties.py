"""Property-based tests: learned optimizers accept random pytrees, shapes and dtypes.

Hypothesis draws nested dict/list/tuple pytrees (depth <= 3, <= 6 leaves, rank
0..3, dims 0..5, float32/bfloat16/float16, magnitudes 1e-6..1e2) and checks, for
every architecture, that updates keep the tree's structure, shapes and dtypes
and stay finite; that integer leaves are rejected; that the update is
permutation equivariant within a tensor; and, for coordinatewise ones, that
leafwise updates equal whole-tree updates.
"""

import chex
import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized
from hypothesis import HealthCheck
from hypothesis import strategies as st

from flatl2o import optimizers

# Every registered architecture, at its defaults: a new one is covered by registering it.
_LOPTS = {name: optimizers.learned(name) for name in optimizers.learned_names()}
# Built once: the meta-parameters, the transformation and its jitted update (jit
# caches one trace per tree structure, so repeated structures are free).
_TX = {name: lopt.transform(lopt.init(jax.random.key(0))) for name, lopt in _LOPTS.items()}
_JIT_UPDATE = {name: jax.jit(tx.update) for name, tx in _TX.items()}
ARCHITECTURES = tuple((name, name) for name in _LOPTS)
# Those whose coordinates do not see each other (L2O-Scale pools over tensors).
COORDINATEWISE = tuple((name, name) for name, lopt in _LOPTS.items() if lopt.coordinatewise)

FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
INT_DTYPES = (jnp.int8, jnp.int16, jnp.int32, jnp.uint8, jnp.bool_)
MAX_LEAVES = 6
MAX_DEPTH = 3
_KEYS = ("a", "b", "kernel", "bias", "w", "scale", "0", "z")

_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow],
                 print_blob=True)


# --------------------------------------------------------------------------- strategies


@st.composite
def leaves(draw, dtypes=FLOAT_DTYPES):
  """One array: rank 0..3, dims 0..5, N(0, 1) * 10**k from a seeded RNG."""
  shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=3)))
  dtype = draw(st.sampled_from(dtypes))
  seed = draw(st.integers(0, 2**32 - 1))
  k = draw(st.integers(-6, 2))
  values = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 10.0**k
  return jnp.asarray(values, dtype=dtype)


@st.composite
def _subtree(draw, num_leaves, depth_left, leaf):
  """A subtree with exactly `num_leaves` leaves and at most `depth_left` container levels."""
  if num_leaves == 1 and (depth_left == 0 or draw(st.booleans())):
    return draw(leaf)
  assert depth_left > 0
  if num_leaves == 0:
    parts = []
  elif depth_left == 1:
    parts = [1] * num_leaves  # the leaves sit directly in this container
  else:  # split the leaves among 1..num_leaves children
    cuts = draw(st.lists(st.integers(1, num_leaves - 1), unique=True,
                         max_size=num_leaves - 1)) if num_leaves > 1 else []
    bounds = [0] + sorted(cuts) + [num_leaves]
    parts = [hi - lo for lo, hi in zip(bounds[:-1], bounds[1:])]
  if depth_left > 1 and draw(st.integers(0, 4)) == 0:
    parts.insert(draw(st.integers(0, len(parts))), 0)  # sometimes an empty sub-container
  children = [draw(_subtree(n, depth_left - 1, leaf)) for n in parts]
  kind = draw(st.sampled_from(("dict", "list", "tuple")))
  if kind == "dict":
    keys = draw(st.lists(st.sampled_from(_KEYS), min_size=len(children),
                         max_size=len(children), unique=True))
    return dict(zip(keys, children))
  return list(children) if kind == "list" else tuple(children)


@st.composite
def pytrees(draw, min_leaves=0, max_leaves=MAX_LEAVES, leaf=leaves()):
  """A nested dict/list/tuple pytree; an empty one ({}, [], ...) when it has no leaves."""
  num_leaves = draw(st.integers(min_leaves, max_leaves))
  return draw(_subtree(num_leaves, MAX_DEPTH, leaf))


def _resample(tree, seed):
  """A second gradient: same structure, shapes and dtypes, new values."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: jnp.asarray(rng.standard_normal(x.shape) * 10.0**rng.integers(-6, 3),
                            dtype=x.dtype), tree)


def _as_f32(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float32), tree)


def _assert_like(test, updates, grads):
  chex.assert_trees_all_equal_structs(updates, grads)
  test.assertEqual(jax.tree.structure(updates), jax.tree.structure(grads))
  chex.assert_trees_all_equal_shapes_and_dtypes(updates, grads)
  chex.assert_tree_all_finite(_as_f32(updates))


# --------------------------------------------------------------------------- tests


@pytest.mark.slow  # hypothesis searches many random trees per architecture (~1-2 minutes)
class PropertyTest(parameterized.TestCase):

  @parameterized.named_parameters(*ARCHITECTURES)
  @hypothesis.settings(max_examples=8, **_SETTINGS)
  @hypothesis.given(grads=pytrees(), seed=st.integers(0, 2**32 - 1))
  def test_random_pytree_keeps_structure_shapes_dtypes_and_is_finite(self, arch, grads, seed):
    tx, jit_update = _TX[arch], _JIT_UPDATE[arch]
    grads2 = _resample(grads, seed)
    state = tx.init(grads)
    # Two consecutive steps, so the second one reads the recurrent state.
    eager1, eager_state = tx.update(grads, state, grads, loss=jnp.float32(1.0))
    eager2, _ = tx.update(grads2, eager_state, grads, loss=jnp.float32(0.5))
    jit1, jit_state = jit_update(grads, state, grads, loss=jnp.float32(1.0))
    jit2, _ = jit_update(grads2, jit_state, grads, loss=jnp.float32(0.5))
    for updates in (eager1, eager2, jit1, jit2):
      _assert_like(self, updates, grads)
    # jit and eager agree (up to a rounding of the final cast to a 16-bit dtype).
    for eager, jitted in ((eager1, jit1), (eager2, jit2)):
      jax.tree.map(lambda e, j: np.testing.assert_allclose(
          np.asarray(j, np.float32), np.asarray(e, np.float32),
          rtol=1e-5 if e.dtype == jnp.float32 else 1e-2, atol=1e-6), eager, jitted)

  @parameterized.named_parameters(*ARCHITECTURES)
  @hypothesis.settings(max_examples=20, **_SETTINGS)
  @hypothesis.given(tree=pytrees(min_leaves=1), data=st.data())
  def test_non_float_leaf_anywhere_is_rejected_with_its_path(self, arch, tree, data):
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    index = data.draw(st.integers(0, len(path_leaves) - 1), label="index")
    dtype = data.draw(st.sampled_from(INT_DTYPES), label="dtype")
    values = [leaf for _, leaf in path_leaves]
    values[index] = jnp.zeros(values[index].shape, dtype)
    bad = jax.tree.unflatten(treedef, values)
    path = jax.tree_util.keystr(path_leaves[index][0]) or "<root>"
    with self.assertRaises(ValueError) as raised:
      _TX[arch].init(bad)
    message = str(raised.exception)
    self.assertIn(f"leaf {path} has dtype {jnp.dtype(dtype).name}", message)
    if jnp.issubdtype(dtype, jnp.signedinteger):
      self.assertIn("dtype int", message)

  @parameterized.named_parameters(*COORDINATEWISE)
  @hypothesis.settings(max_examples=10, **_SETTINGS)
  @hypothesis.given(grads=pytrees(leaf=leaves(dtypes=(jnp.float32,))),
                    seed=st.integers(0, 2**32 - 1))
  def test_leafwise_updates_equal_whole_tree_updates(self, arch, grads, seed):
    tx, jit_update = _TX[arch], _JIT_UPDATE[arch]
    grads2 = _resample(grads, seed)
    state = tx.init(grads)
    whole1, state = jit_update(grads, state, grads)
    whole2, _ = jit_update(grads2, state, grads)
    # Each leaf as its own pytree, from its own fresh state.
    separate1, separate2 = [], []
    for g1, g2 in zip(jax.tree.leaves(grads), jax.tree.leaves(grads2)):
      leaf_state = tx.init(g1)
      u1, leaf_state = jit_update(g1, leaf_state, g1)
      u2, _ = jit_update(g2, leaf_state, g1)
      separate1.append(u1)
      separate2.append(u2)
    treedef = jax.tree.structure(grads)
    chex.assert_trees_all_close(whole1, jax.tree.unflatten(treedef, separate1),
                                rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(whole2, jax.tree.unflatten(treedef, separate2),
                                rtol=1e-5, atol=1e-6)

  @parameterized.named_parameters(*ARCHITECTURES)
  @hypothesis.settings(max_examples=12, **_SETTINGS)
  @hypothesis.given(data=st.data(), size=st.integers(0, 16),
                    seeds=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
                    k=st.integers(-6, 2))
  def test_permuting_a_vector_leaf_permutes_its_update(self, arch, data, size, seeds, k):
    tx, jit_update = _TX[arch], _JIT_UPDATE[arch]
    perm = np.asarray(data.draw(st.permutations(range(size)), label="perm"), np.int64)
    g1, g2 = (jnp.asarray(np.random.default_rng(s).standard_normal(size) * 10.0**k,
                          jnp.float32) for s in seeds)

    def two_steps(a, b):
      state = tx.init({"w": a})
      u1, state = jit_update({"w": a}, state, {"w": a})
      u2, _ = jit_update({"w": b}, state, {"w": a})
      return np.asarray(u1["w"]), np.asarray(u2["w"])

    plain = two_steps(g1, g2)
    permuted = two_steps(g1[perm], g2[perm])
    for p, q in zip(plain, permuted):
      np.testing.assert_allclose(q, p[perm], rtol=1e-5, atol=1e-6)


if __name__ == "__main__":
  absltest.main()
