"""JAX speed: layernorm.layer_norm (jax backend) against a jitted flax.nnx.LayerNorm and plain-JAX formulations.

Every candidate is jitted and timed side by side (`benchmarks.timing.interleaved`, ``block_until_ready`` as the
sync), forward and forward+backward (gradients of ``sum(y * ct)`` with respect to x, weight and bias), on the
same inputs, with a plain copy of x as the memory floor. The forward also times layernorm called outside jit
("layernorm eager": the backend's own compiled program, and the Python dispatch around it). Prints medians and
the ratios to layernorm's median (ratio > 1: the other candidate is slower).

    python -m benchmarks.jax_speed                # (4096, 768) and (8192, 4096), float32 and bfloat16
    python -m benchmarks.jax_speed --quick        # smaller shapes, fewer rounds
    python -m benchmarks.jax_speed --threads 1 --clock process   # steadier on a busy machine
    python -m benchmarks.jax_speed --shapes 1x768,1024x768 --dtype float32

``--threads 1`` runs XLA:CPU single-threaded and ``--clock process`` times with the process CPU clock, which a
busy shared machine disturbs far less than the wall clock (time spent descheduled is not counted).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import layernorm
from benchmarks.cases import rows_by_columns
from benchmarks.timing import Clock, Timing, interleaved, print_timings
from layernorm.cli import positive_int

EPS = 1e-6  # Flax's default; every candidate uses it
SHAPES = ((4096, 768), (8192, 4096))
QUICK_SHAPES = ((1024, 768), (2048, 1024))
DTYPES = ("float32", "bfloat16")

Fn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def plain_two_pass(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """Plain JAX, stable: var = mean((x - mean)^2), statistics in float32."""
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    centered = xf - mean
    var = (centered * centered).mean(-1, keepdims=True)
    return (centered * jax.lax.rsqrt(var + EPS) * w + b).astype(x.dtype)


def plain_one_pass(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """Plain JAX, Flax's fast variance: var = E[x^2] - E[x]^2 (one read of x, not stable)."""
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.maximum((xf * xf).mean(-1, keepdims=True) - mean * mean, 0.0)
    return ((xf - mean) * jax.lax.rsqrt(var + EPS) * w + b).astype(x.dtype)


def ours(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """The public API of layernorm, on the jax backend."""
    return layernorm.layer_norm(x, w, b, eps=EPS)


def flax_layer_norm(n: int, dtype: str) -> Fn:
    """A flax.nnx.LayerNorm as a pure function of (x, scale, bias), so it is jitted and differentiated alike."""
    from flax import nnx

    module = nnx.LayerNorm(n, epsilon=EPS, dtype=jnp.dtype(dtype), param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    graph, state = nnx.split(module)
    names = [path[0] for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    treedef = jax.tree.structure(state)

    def apply(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
        by_name = {"scale": w, "bias": b}
        params = jax.tree.unflatten(treedef, [by_name[str(getattr(n, "key", n))] for n in names])
        return nnx.merge(graph, params)(x)

    return apply


def forward_and_backward(fn: Fn) -> Callable[..., Any]:
    """jit(grad) of sum(fn(x, w, b) * ct) with respect to x, w and b (ct an argument, not a baked-in constant)."""

    def loss(x: jax.Array, w: jax.Array, b: jax.Array, ct: jax.Array) -> jax.Array:
        return jnp.sum(fn(x, w, b).astype(jnp.float32) * ct)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def candidates(n: int, dtype: str) -> dict[str, Fn]:
    """The formulations compared, by name; layernorm first."""
    fns: dict[str, Fn] = {"layernorm": ours}
    try:
        fns["flax.nnx"] = flax_layer_norm(n, dtype)
    except ImportError:
        print("flax is not installed: the Flax candidate is skipped")
    fns["plain_two_pass"] = plain_two_pass
    fns["plain_one_pass"] = plain_one_pass
    return fns


def run_case(shape: tuple[int, int], dtype: str, rounds: int, clock: Clock) -> dict[str, dict[str, Timing]]:
    """Time forward, forward+backward and the copy floor for one shape and dtype."""
    n = shape[-1]
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    inputs = [jax.random.normal(k, shape, jnp.float32).astype(dtype) * 2 + 1 for k in keys[:2]]
    w = 1 + 0.1 * jax.random.normal(keys[2], (n,), jnp.float32)
    b = 0.1 * jnp.ones((n,), jnp.float32)
    ct = jax.random.normal(keys[2], shape, jnp.float32)
    fns = candidates(n, dtype)

    def bind(f: Callable[..., Any], *extra: jax.Array) -> Callable[[jax.Array], Any]:
        return lambda x: f(x, w, b, *extra)

    forward: dict[str, Callable[[jax.Array], Any]] = {name: bind(jax.jit(f)) for name, f in fns.items()}
    forward["layernorm eager"] = bind(ours)  # called outside jit: the backend's own jitted program, plus dispatch
    forward["copy"] = jax.jit(jnp.copy)
    backward = {name: bind(forward_and_backward(f), ct) for name, f in fns.items()}
    sync = jax.block_until_ready
    return {
        "forward": interleaved(forward, inputs, sync, rounds=rounds, clock=clock),
        "forward+backward": interleaved(backward, inputs, sync, rounds=rounds, clock=clock),
    }


def report(shape: tuple[int, int], dtype: str, results: dict[str, dict[str, Timing]]) -> None:
    """Print one table per pass: median ms, p10-p90 over the samples, ratio to layernorm."""
    for label, timings in results.items():
        heading = f"\n{shape} {dtype} {label} (median of {timings['layernorm'].repeats} samples)"
        print_timings(heading, timings, "layernorm")


def main(argv: list[str] | None = None) -> None:
    """Run every case and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, 3 rounds")
    parser.add_argument("--shapes", type=rows_by_columns, help="comma-separated rows x columns, e.g. 1x768,4096x768")
    parser.add_argument("--rounds", type=positive_int, help="interleaved rounds (default 7, quick 3)")
    parser.add_argument("--threads", type=positive_int, help="XLA:CPU threads (1: single-threaded)")
    parser.add_argument("--clock", choices=("wall", "process"), default="wall", help="wall clock or process CPU time")
    parser.add_argument("--dtype", choices=DTYPES, action="append", help="only this dtype (repeatable)")
    args = parser.parse_args(argv)
    if args.threads is not None:  # read when XLA creates its CPU client, at the first computation below
        flags = (
            f"--xla_cpu_multi_thread_eigen={str(args.threads > 1).lower()} intra_op_parallelism_threads={args.threads}"
        )
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    if args.clock == "process" and jax.default_backend() != "cpu":  # after XLA_FLAGS: this starts XLA
        parser.error(f"--clock process cannot time {jax.default_backend()} work (it counts this process's CPU time)")
    shapes = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)
    rounds = args.rounds or (3 if args.quick else 7)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}), clock={args.clock}")
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    for shape in shapes:
        for dtype in args.dtype or DTYPES:
            report(shape, dtype, run_case(shape, dtype, rounds, clock))


if __name__ == "__main__":
    main()
