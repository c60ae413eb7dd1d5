"""Imitation, the second half of the L2O-enhanced recipe (Chen et al. 2020).

With probability `MetaTrainConfig.imitation_ratio` a meta-step does not unroll
the learned optimizer on its own trajectory: fresh optimizees follow Adam
(learning rate `TEACHER_LEARNING_RATE`) for `unroll_length` steps, the learned
optimizer is fed the same gradients, and the meta-loss is how far its updates
are from Adam's,

  mean_t mean_b ||u_t^learned - u_t^adam||^2 / ||u_t^adam||^2,

relative so that every step of the trajectory counts alike. A learned
optimizer that starts far from a working one is pulled toward a known-good
update rule early, which Chen et al. found stabilises meta-training and gives
stronger learned optimizers.

References:
  Chen, Chen, Liu, Wang and Wang, "Training Stronger Baselines for Learning to
  Optimize", NeurIPS 2020.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from flatl2o.meta import inner
from flatl2o.meta.config import MetaTrainConfig

# Adam's default learning rate in flatl2o.optimizers.get('adam'), the one that
# trains every shipped optimizee.
TEACHER_LEARNING_RATE = 0.01


def imitation_loss(lopt, task, config: MetaTrainConfig, meta_params,
                   key: jax.Array) -> jax.Array:
  """The relative squared distance of the learned updates to Adam's along Adam's path.

  Args:
    lopt: the learned-optimizer architecture.
    task: the optimizee.
    config: the configuration; its `meta_batch_size` optimizees follow Adam for
      `unroll_length` steps.
    meta_params: the learned optimizer's parameters (what the loss is differentiated by).
    key: draws the optimizees' initialisations and the minibatches.

  Returns:
    The scalar meta-loss: the mean over steps and optimizees of
    `||u^learned - u^adam||^2 / ||u^adam||^2`.
  """
  init_key, steps_key = jax.random.split(key)
  state = inner.init_inner(lopt, task, meta_params,
                           jax.random.split(init_key, config.meta_batch_size))
  teacher = optax.adam(TEACHER_LEARNING_RATE)
  tx = inner.batched_transform(lopt, meta_params)

  def one(params, key):
    batch = task.sample_batch(key)
    return jax.value_and_grad(lambda p: task.loss(p, batch))(params)

  def step(carry, key):
    params, opt_state, teacher_state = carry
    losses, grads = jax.vmap(one)(params, jax.random.split(key, config.meta_batch_size))
    grads = jax.lax.stop_gradient(grads)
    target, teacher_state = jax.vmap(teacher.update)(grads, teacher_state, params)
    learned, opt_state = tx.update(grads, opt_state, params, loss=losses)
    per_optimizee = lambda tree: sum(jnp.sum(x.astype(jnp.float32) ** 2,
                                             axis=tuple(range(1, x.ndim)))
                                     for x in jax.tree.leaves(tree))
    error = per_optimizee(jax.tree.map(jnp.subtract, learned, target))
    relative = error / jnp.maximum(per_optimizee(target), 1e-30)
    params = optax.apply_updates(params, target)  # follow the teacher's path
    return (params, opt_state, teacher_state), jnp.mean(relative)

  carry = (state.params, state.opt_state, jax.vmap(teacher.init)(state.params))
  _, errors = jax.lax.scan(jax.checkpoint(step), carry,
                           jax.random.split(steps_key, config.unroll_length))
  return jnp.mean(errors)
