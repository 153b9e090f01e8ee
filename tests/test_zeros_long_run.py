"""Zeros stay zero over a long run: pruners chained with weight quantizers, 10,000 steps, three optimizers.

One param tree holds a leaf per (pruner, quantizer) pair; a chain of all the
pruners then all the quantizers, each selecting its own leaves, compresses it,
so one compiled program trains every pair. Every ``CHECK_EVERY`` steps the run
counts, for each pair, the weights outside the current mask that are not
exactly zero in the params, in the fake-quantized weights and in the integer
codes (a code that does not decode to 0.0). All counts must be 0, and the
masks must hold the sparsity they were asked for (so the check is not vacuous).

Compilation grows with the number of leaves, so CI trains 11 pairs per
optimizer (every pruner, every quantizer; 33 distinct pairs over the three
runs). ``JAXCOMPRESS_LONG_RUN=full`` trains all 77 pairs under each optimizer
(``benchmarks/reliability.py`` does, for ``zeros_kept_10k``).
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import soft_masks, standard_promotion

import jaxcompress as jc

STEPS = int(os.environ.get("JAXCOMPRESS_LONG_RUN_STEPS", "10000"))
FULL = os.environ.get("JAXCOMPRESS_LONG_RUN") == "full"
CHECK_EVERY = 500
SPARSITY = 0.5
_GRADUAL = jc.schedules.polynomial(0.0, SPARSITY, begin=0, end=min(2000, STEPS // 5), frequency=100)

PRUNERS = {
    "magnitude": lambda rule: jc.prune.magnitude(_GRADUAL, rule=rule),
    "random": lambda rule: jc.prune.random(_GRADUAL, rule=rule),
    "saliency": lambda rule: jc.prune.saliency(_GRADUAL, rule=rule),
    "movement": lambda rule: jc.prune.movement(_GRADUAL, rule=rule),
    "snip": lambda rule: jc.prune.snip(SPARSITY, scope="layer", rule=rule),
    "n_m": lambda rule: jc.prune.n_m(2, 4, rule=rule),
    "channel": lambda rule: jc.prune.channel(_GRADUAL, rule=rule),
    "block": lambda rule: jc.prune.block(_GRADUAL, (2, 2), rule=rule),
    "set": lambda rule: jc.prune.set_(SPARSITY, frequency=300, rule=rule),
    "rigl": lambda rule: jc.prune.rigl(SPARSITY, end=STEPS // 2, frequency=300, rule=rule),
    "ste": lambda rule: jc.prune.ste(jc.prune.magnitude(_GRADUAL, rule=rule)),
}
QUANTIZERS = {
    "int8": lambda rule: jc.quant.int8(rule=rule),
    "asymmetric-tensor": lambda rule: jc.quant.uniform(4, symmetric=False, granularity="tensor", rule=rule),
    "asymmetric-unsigned-group": lambda rule: jc.quant.uniform(
        4, symmetric=False, signed=False, granularity=jc.quant.per_group(4), rule=rule
    ),
    "stochastic": lambda rule: jc.quant.uniform(4, rounding="stochastic", rule=rule),
    "lsq": lambda rule: jc.quant.lsq(4, rule=rule),
    "log2": lambda rule: jc.quant.log2(4, rule=rule),
    "kmeans": lambda rule: jc.quant.kmeans(3, rule=rule),
}
OPTIMIZERS = {
    "adamw": lambda: optax.adamw(3e-3, weight_decay=0.1),
    "sgd-momentum": lambda: optax.sgd(3e-2, momentum=0.9),
    "multisteps-adam": lambda: optax.adam(3e-3),  # wrapped in optax.MultiSteps(every_k_schedule=2) below
}
SHAPE = (8, 8)


def _path(pruner: str, quantizer: str) -> str:
    return f"{pruner}__{quantizer}"


def pairs(run: int) -> list[tuple[str, str]]:
    """The pairs optimizer ``run`` trains: all of them, or each pruner once with a rotating quantizer."""
    quantizers = list(QUANTIZERS)
    if FULL:
        return [(p, q) for p in PRUNERS for q in quantizers]
    return [(p, quantizers[(i + 4 * run) % len(quantizers)]) for i, p in enumerate(PRUNERS)]


def _problem(chosen: list[tuple[str, str]]):
    keys = jax.random.split(jax.random.key(0), 3 * len(chosen)).reshape(-1, 3)
    params, inputs, targets = {}, {}, {}
    for (p, q), k in zip(chosen, keys, strict=True):
        params[_path(p, q)] = jax.random.normal(k[0], SHAPE)
        inputs[_path(p, q)] = jax.random.normal(k[1], (16, SHAPE[0]))
        targets[_path(p, q)] = jax.random.normal(k[2], (16, SHAPE[1]))
    stages = [PRUNERS[p](jc.paths.regex(rf"^{p}__")) for p in dict.fromkeys(p for p, _ in chosen)]
    stages += [QUANTIZERS[q](jc.paths.regex(rf"__{q}$")) for q in dict.fromkeys(q for _, q in chosen)]
    return params, inputs, targets, jc.chain(*stages)


def _violations(recipe, params, cstate):
    """Per leaf: [weights outside the mask that are non-zero in params, in the fake-quantized weights,
    in the integer codes; weights outside the mask]."""
    masks = jc.masks_of(cstate)
    soft = soft_masks(cstate)  # ste's: its params stay dense, its weights and codes must not
    compressed = recipe.apply(params, cstate)
    integer = jc.integer_weights(recipe, params, cstate)
    out = {}
    for path, mask in {**masks, **soft}.items():
        pruned = ~mask.unpack()
        decoded = integer[path].dequantize()
        out[path] = jnp.stack(
            [
                jnp.sum(pruned & (params[path] != 0)) if path in masks else jnp.int32(0),
                jnp.sum(pruned & (compressed[path] != 0)),
                jnp.sum(pruned & (decoded != 0)),
                jnp.sum(pruned),
            ]
        )
    return out


@functools.cache
def _run(optimizer: str):
    chosen = pairs(sorted(OPTIMIZERS).index(optimizer))
    params, inputs, targets, recipe = _problem(chosen)
    inner = standard_promotion(OPTIMIZERS[optimizer]())  # optax's own code needs standard promotion
    tx = jc.optim.with_compression(inner, recipe)
    if optimizer.startswith("multisteps"):
        tx = standard_promotion(optax.MultiSteps(tx, every_k_schedule=2))

    def loss_fn(p, cstate):
        w = recipe.apply(p, cstate)
        return sum(jnp.mean((inputs[k] @ w[k] - targets[k]) ** 2) for k in w)

    grad_fn = jc.optim.value_and_grad(loss_fn)

    def step(carry, _):
        p, opt_state = carry
        cstate = jc.optim.compression_state(opt_state)
        _, grads, learned_grads = grad_fn(p, cstate)
        updates, opt_state = tx.update(grads, opt_state, p, learned_grads=learned_grads)
        return (optax.apply_updates(p, updates), opt_state), None

    def block(carry, _):
        carry, _ = jax.lax.scan(step, carry, None, length=CHECK_EVERY)
        p, opt_state = carry
        return carry, _violations(recipe, p, jc.optim.compression_state(opt_state))

    @jax.jit
    def run(p, opt_state):
        return jax.lax.scan(block, (p, opt_state), None, length=STEPS // CHECK_EVERY)

    (final, _), counts = run(params, tx.init(params))
    return chosen, params, final, jax.tree.map(np.asarray, counts)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_pruned_weights_stay_exactly_zero_in_params_fake_quantized_weights_and_codes(optimizer):
    chosen, initial, final, counts = _run(optimizer)
    assert sorted(counts) == sorted(_path(p, q) for p, q in chosen)
    problems = []
    for path, c in counts.items():
        in_params, in_weights, in_codes, pruned = c.T
        for name, count in (("params", in_params), ("fake-quantized weights", in_weights), ("codes", in_codes)):
            if count.any():
                problems.append(f"{path}: non-zero pruned weights in the {name} at the checks: {count.tolist()}")
        # Not vacuous: by the end every pair holds its sparsity, and its kept weights trained.
        if pruned[-1] != round(SPARSITY * np.prod(SHAPE)):
            problems.append(f"{path}: {pruned[-1]} weights pruned at the end, expected {SPARSITY:.0%}")
        kept = ~np.asarray(final[path] == 0)
        if not np.any(np.asarray(final[path])[kept] != np.asarray(initial[path])[kept]):
            problems.append(f"{path}: the kept weights did not train")
    assert not problems, "\n".join(problems)


def test_ci_pairs_cover_every_pruner_and_quantizer_under_each_optimizer():
    runs = [pairs(r) for r in range(len(OPTIMIZERS))]
    for chosen in runs:
        assert {p for p, _ in chosen} == set(PRUNERS) and {q for _, q in chosen} == set(QUANTIZERS)
    assert len(set().union(*runs)) == (len(PRUNERS) * len(QUANTIZERS) if FULL else 3 * len(PRUNERS))
