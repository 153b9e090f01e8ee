import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import adam, adamw, make_params, promotion, standard_promotion

import jaxcompress as jc
from jaxcompress.masks import PackedMask


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), padding="SAME")(x))
        x = jnp.reshape(x, (x.shape[0], -1))
        x = nn.relu(nn.Dense(32)(x))
        return nn.Dense(10)(x)


def setup(seed=0):
    model = Net()
    x = jax.random.normal(jax.random.key(seed), (32, 3, 3, 2))
    y = jax.random.randint(jax.random.key(seed + 1), (32,), 0, 10)
    params = model.init(jax.random.key(seed + 2), x[:1])["params"]
    return model, params, x, y


def recipe_for(end=20, sparsity=0.9):
    schedule = jc.schedules.polynomial(0.0, sparsity, begin=0, end=end, frequency=5)
    return jc.chain(jc.prune.magnitude(schedule), jc.quant.int8())


def make_step(model, tx, recipe, traces=None):
    def loss_fn(params, cstate, x, y):
        logits = model.apply({"params": recipe.apply(params, cstate)}, x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    def step(params, opt_state, x, y):
        if traces is not None:
            traces.append(1)
        grads = jax.grad(loss_fn)(params, jc.optim.compression_state(opt_state), x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step


@pytest.mark.parametrize(
    "inner",
    [
        adamw(1e-2, weight_decay=0.1),
        standard_promotion(optax.inject_hyperparams(optax.adamw)(learning_rate=1e-2, weight_decay=0.1)),
        optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9)),
    ],
    ids=["adamw", "inject_hyperparams", "chain-sgd-momentum"],
)
def test_pruned_weights_stay_exactly_zero_for_200_steps(inner):
    model, params, x, y = setup()
    recipe = recipe_for(end=50)
    tx = jc.optim.with_compression(inner, recipe)
    opt_state = tx.init(params)
    step = jax.jit(make_step(model, tx, recipe))
    for i in range(200):
        params, opt_state = step(params, opt_state, x, y)
        if i in (30, 120, 199):
            masks = jc.masks_of(jc.optim.compression_state(opt_state))
            flat = jc.paths.flatten(params)[0]
            for path, mask in masks.items():
                w, keep = flat[path], mask.unpack()
                assert bool(jnp.all(w[~keep] == 0.0)), (i, path)
                if i >= 50:
                    assert int(jnp.sum(~keep)) == round(0.9 * w.size)
                    assert int(jnp.sum(w == 0.0)) >= round(0.9 * w.size)
    # The surviving weights did train.
    assert float(jnp.max(jnp.abs(params["Dense_0"]["kernel"]))) > 0.0


def test_wrapper_nested_in_optax_chain():
    model, params, x, y = setup()
    recipe = recipe_for(end=10)
    tx = optax.chain(optax.clip_by_global_norm(1.0), jc.optim.with_compression(adam(1e-2), recipe))
    opt_state = tx.init(params)
    step = jax.jit(make_step(model, tx, recipe))
    for _ in range(15):
        params, opt_state = step(params, opt_state, x, y)
    keep = jc.masks_of(jc.optim.compression_state(opt_state))["Dense_0/kernel"].unpack()
    assert bool(jnp.all(params["Dense_0"]["kernel"][~keep] == 0.0))


def test_train_step_traces_once_while_schedule_advances():
    model, params, x, y = setup()
    recipe = recipe_for(end=20)
    tx = jc.optim.with_compression(adamw(1e-3, weight_decay=1e-2), recipe)
    opt_state = tx.init(params)
    traces = []
    step = jax.jit(make_step(model, tx, recipe, traces))
    sparsities = []
    for _ in range(30):
        params, opt_state = step(params, opt_state, x, y)
        sparsities.append(float(jc.optim.compression_state(opt_state)[0].sparsity))
    assert len(traces) == 1
    assert sparsities[0] == 0.0 and sparsities[-1] == pytest.approx(0.9)
    assert len(set(sparsities)) >= 4  # the mask really changed several times


def test_state_shapes_and_dtypes():
    _, params, _, _ = setup()
    recipe = recipe_for()
    tx = jc.optim.with_compression(adamw(1e-3), recipe)
    state = tx.init(params)
    cstate = jc.optim.compression_state(state)
    prune_state, quant_state = cstate
    chex.assert_shape(prune_state.count, ())
    chex.assert_type(prune_state.count, jnp.int32)
    chex.assert_shape(prune_state.sparsity, ())
    chex.assert_type(prune_state.sparsity, jnp.float32)
    expected_paths = ["Conv_0/kernel", "Dense_0/kernel", "Dense_1/kernel"]
    assert sorted(prune_state.masks.keep) == expected_paths
    flat = jc.paths.flatten(params)[0]
    for path, mask in prune_state.masks.keep.items():
        assert isinstance(mask, PackedMask)
        shape = flat[path].shape
        rows = int(np.prod(shape[:-1]))
        chex.assert_shape(mask.bits, (-(-rows // 8), shape[-1]))
        chex.assert_type(mask.bits, jnp.uint8)
    for bits in quant_state.bits.values():
        chex.assert_shape(bits, ())
        chex.assert_type(bits, jnp.int32)
    # One step later every leaf keeps its shape and dtype.
    grads = jax.tree.map(jnp.ones_like, params)
    _, new_state = jax.jit(tx.update)(grads, state, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)


def test_mask_state_is_a_small_fraction_of_params():
    params = make_params()
    state = jc.prune.magnitude(0.5).init(params)
    mask_bytes = sum(m.bits.nbytes for m in state.masks.keep.values())
    kernel_bytes = sum(params[k]["kernel"].nbytes for k in params)
    assert mask_bytes <= kernel_bytes / 32 + 8 * 3 * 32  # one bit per weight plus row padding


def test_jit_and_pmap_agree():
    n_dev = 4
    assert jax.device_count() >= n_dev
    model, params, x, y = setup()
    recipe = recipe_for(end=8)
    tx = jc.optim.with_compression(adamw(1e-2, weight_decay=1e-2), recipe)
    loss = lambda p, c, xb, yb: jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": recipe.apply(p, c)}, xb), yb)
    )

    def jit_step(p, s, xb, yb):
        g = jax.grad(loss)(p, jc.optim.compression_state(s), xb, yb)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    def pmap_step(p, s, xb, yb):
        g = jax.grad(loss)(p, jc.optim.compression_state(s), xb, yb)
        g = jax.lax.pmean(g, "devices")
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    p1, s1 = params, tx.init(params)
    f1 = jax.jit(jit_step)
    devices = jax.devices()[:n_dev]
    f2 = jax.pmap(pmap_step, axis_name="devices", devices=devices)
    replicate = lambda tree: jax.tree.map(lambda a: jnp.broadcast_to(a, (n_dev, *a.shape)), tree)
    p2 = replicate(params)
    s2 = replicate(tx.init(params))
    xs = x.reshape(n_dev, -1, *x.shape[1:])
    ys = y.reshape(n_dev, -1)
    for _ in range(12):
        p1, s1 = f1(p1, s1, x, y)
        p2, s2 = f2(p2, s2, xs, ys)
    p2, s2 = jax.device_get((p2, s2))  # per-device slices in numpy, not one eager program per slice
    masks_jit = jax.device_get(jc.masks_of(jc.optim.compression_state(s1)))
    for d in range(n_dev):
        chex.assert_trees_all_close(jax.tree.map(lambda a, d=d: a[d], p2), p1, atol=1e-5, rtol=1e-5)
        state_d = jc.optim.compression_state(jax.tree.map(lambda a, d=d: a[d], s2))
        chex.assert_trees_all_equal(jax.device_get(jc.masks_of(state_d)), masks_jit)


def test_update_requires_params():
    _, params, _, _ = setup()
    tx = jc.optim.with_compression(optax.sgd(0.1), recipe_for())
    state = tx.init(params)
    with pytest.raises(ValueError, match="`params` is required"):
        tx.update(params, state)


def test_compression_state_errors():
    with pytest.raises(ValueError, match="exactly one"):
        jc.optim.compression_state(optax.sgd(0.1).init({"w": jnp.ones(2)}))
    with pytest.raises(TypeError, match="`recipe` must be"):
        jc.optim.with_compression(optax.sgd(0.1), "magnitude")
    with pytest.raises(TypeError, match="`inner` must be"):
        jc.optim.with_compression(0.1, recipe_for())


def test_extra_args_are_forwarded():
    _, params, _, _ = setup()
    recipe = recipe_for()
    inner = optax.scale_by_backtracking_linesearch(max_backtracking_steps=2)
    tx = jc.optim.with_compression(optax.chain(optax.sgd(0.1), inner), recipe)
    fn = lambda p: sum(jnp.sum(a**2) for a in jax.tree.leaves(p))
    state = tx.init(params)
    grads = jax.grad(fn)(params)
    updates, _ = tx.update(grads, state, params, value=fn(params), grad=grads, value_fn=fn)
    assert jax.tree.structure(updates) == jax.tree.structure(params)


def readme_step(model, tx, recipe):
    """The README's loop body: the plain optax step, nothing else."""

    @jax.jit
    def step(params, opt_state, x, y):
        cstate = jc.optim.compression_state(opt_state)

        def loss(p):
            logits = model.apply({"params": recipe.apply(p, cstate)}, x)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

        updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step


def test_a_resumed_loop_refreshes_where_an_uninterrupted_one_does():
    # The silent failure of host-side refresh decisions: a resumed loop counts from 0
    # again. The decision lives in the state's counter, so the restored run goes on
    # exactly, and reaches the target sparsity.
    model, params, x, y = setup()
    recipe = recipe_for(end=12, sparsity=0.9)
    tx = jc.optim.with_compression(adamw(1e-2, weight_decay=1e-2), recipe)
    step = readme_step(model, tx, recipe)
    straight = (params, tx.init(params))
    for _ in range(20):
        straight = step(*straight, x, y)
    run = (params, tx.init(params))
    for _ in range(7):
        run = step(*run, x, y)
    saved = jax.tree.map(np.asarray, run)  # what a checkpoint holds
    run = jax.tree.map(jnp.asarray, saved)
    for _ in range(13):  # a new loop, its own counter from 0
        run = step(*run, x, y)
    chex.assert_trees_all_equal(run, straight)
    cstate = jc.optim.compression_state(run[1])
    assert float(cstate[0].sparsity) == pytest.approx(0.9)
    for path, mask in jc.masks_of(cstate).items():
        assert int(jnp.sum(~mask.unpack())) == round(0.9 * np.prod(mask.shape)), path


def test_fit_is_the_plain_loop():
    model, params, x, y = setup()
    recipe = recipe_for(end=12)
    tx = jc.optim.with_compression(adam(1e-2), recipe)
    step = readme_step(model, tx, recipe)
    plain = (params, tx.init(params))
    for _ in range(14):
        plain = step(*plain, x, y)
    apply_fn = lambda p, xb: model.apply({"params": p}, xb)
    fitted, fitted_state, _ = jc.train.fit(apply_fn, params, tx, iter([(x, y)] * 14), 14, recipe=recipe)
    chex.assert_trees_all_close((fitted, fitted_state), plain, rtol=1e-6, atol=1e-6)


def test_multisteps_schedules_count_emitted_steps():
    # optax.MultiSteps(k=2) calls the wrapper once per two micro-steps: schedules count optimizer steps.
    _, params, _, _ = setup()
    schedule = jc.schedules.polynomial(0.0, 0.8, begin=0, end=40, frequency=1)
    recipe = jc.prune.magnitude(schedule)
    wrapper = promotion(jc.optim.with_compression(optax.sgd(0.1), recipe), "strict")  # ours stays strict inside
    tx = standard_promotion(optax.MultiSteps(wrapper, every_k_schedule=2))
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    update = jax.jit(tx.update)
    for _ in range(50):
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    cstate = jc.optim.compression_state(state)
    assert int(cstate.count) == 25
    assert float(cstate.sparsity) == pytest.approx(float(schedule(24)), abs=1e-6)  # refreshed at its 25th update
    for path, mask in jc.masks_of(cstate).items():
        w = jc.paths.flatten(params)[0][path]
        assert bool(jnp.all(w[~mask.unpack()] == 0.0)), path


def test_grads_must_match_the_params():
    _, params, _, _ = setup()
    tx = jc.optim.with_compression(optax.sgd(0.1), recipe_for())
    state = tx.init(params)
    bad = jax.tree.map(jnp.ones_like, params)
    bad["Dense_0"]["kernel"] = jnp.ones((1, bad["Dense_0"]["kernel"].shape[1]))
    with pytest.raises(ValueError, match="'Dense_0/kernel' has shape"):
        tx.update(bad, state, params)
    missing = {k: v for k, v in jax.tree.map(jnp.ones_like, params).items() if k != "Dense_1"}
    with pytest.raises(ValueError, match="missing leaves"):
        tx.update(missing, state, params)
