"""torch.distributed on the CPU, one process: DTensor inputs and FSDP2 (``fully_shard``) with the torch modules.

A world of one rank (gloo, a file store) runs the DTensor and FSDP2 code paths: placements propagate through our
ops, with the reference's values, and a sharded model's gradients equal the plain model's, bit for bit (FSDP2
runs the modules on plain, gathered parameters).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

from torch_checks import check_layer_norm_grads, check_rms_norm_grads, f64  # noqa: E402

import layernorm  # noqa: E402
import layernorm.torch as lt  # noqa: E402
from layernorm_core import check_forward, reference  # noqa: E402
from layernorm_core.tolerances import error_ratio, row_condition, tolerance  # noqa: E402

if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available in this torch build", allow_module_level=True)

from torch.distributed.fsdp import fully_shard  # noqa: E402
from torch.distributed.tensor import DeviceMesh, DTensor, Replicate, Shard, distribute_tensor  # noqa: E402


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A one-rank CPU device mesh over a gloo process group, for this module's tests."""
    store = Path(tmp_path_factory.mktemp("dist")) / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        yield DeviceMesh("cpu", [0])
    finally:
        dist.destroy_process_group()


CASES = pytest.mark.parametrize(
    ("op", "dtype", "affine", "rows"),
    [
        pytest.param(op, dtype, affine, rows, id=f"{op}-{dtype}-{'affine' if affine else 'no-affine'}-{rows}-rows")
        for op, dtype, affine, rows in itertools.product(
            ["layer_norm", "rms_norm"], ["float32", "bfloat16"], [True, False], [6, 1 << 15]
        )
    ],
)
"""1 << 15 rows reach the CPU routes that work in plain scratch tensors for plain inputs (`rms_rows`, the blocked half
backward); a DTensor takes torch's ops there, which dispatch through it."""


def _problem(op: str, dtype: str, rows: int, affine: bool) -> tuple[Any, Any, list[Any]]:
    """x and dy of (rows, 16), and the parameters (weight and bias; weight; none), seeded."""
    generator = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    x, dy = (torch.randn(rows, 16, generator=generator).to(dt) for _ in range(2))
    count = (2 if op == "layer_norm" else 1) if affine else 0
    return x, dy, [torch.randn(16, generator=generator).to(dt) for _ in range(count)]


def _check(op: str, dtype: str, x: Any, dy: Any, params: list[Any], y: Any, grads: tuple[Any, ...]) -> None:
    """y and the gradients (DTensors; None where not taken, at the end) against the float64 reference."""
    weight = params[0] if params else None
    bias = params[1] if len(params) > 1 else None
    spec = check_forward(op, x, weight, bias, -1, 1e-5)
    p64 = [None if p is None else f64(p) for p in ((weight, bias) if op == "layer_norm" else (weight,))]
    expected_y = (reference.layer_norm if op == "layer_norm" else reference.rms_norm)(f64(x), *p64, spec)[0]
    assert error_ratio(f64(y.full_tensor()), expected_y, tolerance(dtype, "output"), row_condition(f64(x), spec)) <= 1
    check_grads = check_layer_norm_grads if op == "layer_norm" else check_rms_norm_grads
    full = tuple(g.full_tensor() for g in grads)
    check_grads(full + (None,) * (len(p64) + 1 - len(full)), x, weight, dy, -1, dtype)


@CASES
def test_dtensor_autograd_gives_dtensors_with_the_reference_values(
    mesh: Any, op: str, dtype: str, affine: bool, rows: int
) -> None:
    """Row-sharded x, replicated parameters: y and every gradient are DTensors, as the reference says."""
    x, dy, params = _problem(op, dtype, rows, affine)
    sharded = [distribute_tensor(x, mesh, [Shard(0)])] + [distribute_tensor(p, mesh, [Replicate()]) for p in params]
    sharded = [t.requires_grad_() for t in sharded]
    y = getattr(layernorm, op)(*sharded)
    assert isinstance(y, DTensor) and y.placements == (Shard(0),)
    torch.autograd.backward(y, distribute_tensor(dy, mesh, [Shard(0)]))
    assert all(isinstance(t.grad, DTensor) for t in sharded)
    _check(op, dtype, x, dy, params, y, tuple(t.grad for t in sharded))


@CASES
def test_dtensor_explicit_backward_gives_dtensors_with_the_reference_values(
    mesh: Any, op: str, dtype: str, affine: bool, rows: int
) -> None:
    """``layer_norm_backward`` / ``rms_norm_backward`` (and the forward's statistics) on DTensors."""
    x, dy, params = _problem(op, dtype, rows, affine)
    x_d, dy_d = (distribute_tensor(t, mesh, [Shard(0)]) for t in (x, dy))
    params_d = [distribute_tensor(p, mesh, [Replicate()]) for p in params]
    weight = params_d[0] if params_d else None
    y, *stats = getattr(layernorm, op)(x_d, *params_d, return_stats=True)
    assert all(isinstance(s, DTensor) for s in stats)
    grads = getattr(layernorm, f"{op}_backward")(dy_d, x_d, weight)
    assert all(isinstance(g, DTensor) for g in grads)
    _check(op, dtype, x, dy, params, y, grads)  # dweight (and dbias) as for ones without parameters


def test_fully_shard_trains_the_torch_modules_as_the_plain_model(mesh: Any) -> None:
    """FSDP2 shards LayerNorm's and RMSNorm's parameters into DTensors; one step's gradients match the plain model."""

    def model() -> Any:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(16, 16), lt.LayerNorm(16), torch.nn.GELU(), lt.RMSNorm(16))

    plain, sharded = model(), fully_shard(model(), mesh=mesh)
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    plain(x).square().sum().backward()
    sharded(x).square().sum().backward()
    for (name, ours), theirs in zip(sharded.named_parameters(), plain.parameters(), strict=True):
        assert isinstance(ours, DTensor), name
        torch.testing.assert_close(ours.grad.full_tensor(), theirs.grad, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("placement", [Shard(0), Shard(1)], ids=["batch-sharded", "row-sharded"])
@pytest.mark.parametrize("recorded", [False, True], ids=["no-grad", "requires-grad"])
def test_dtensor_rms_norm_rows_off_the_cpu(
    monkeypatch: pytest.MonkeyPatch, mesh: Any, placement: Any, recorded: bool
) -> None:
    """The route of the CUDA rms_norm rows torch's kernel reads value by value (`rms_rows.by_norm`, through
    `RMSNormRows` when autograd records), here on CPU DTensors: sharded along the normalized axis too, where the
    rows' norms are partial sums, which an in-place op on them would have to reshard (DTensor refuses)."""
    from layernorm_torch import backend, rms_rows

    monkeypatch.setattr(rms_rows, "forward", rms_rows.by_norm)
    x, dy, params = _problem("rms_norm", "float32", 6, True)
    x_d = distribute_tensor(x, mesh, [placement]).requires_grad_(recorded)
    w_d = distribute_tensor(params[0], mesh, [Replicate()]).requires_grad_(recorded)
    spec = check_forward("rms_norm", x_d, w_d, None, -1, 1e-5)
    y = backend._rms_norm_rows(x_d, w_d, spec, return_stats=False, through_function=recorded)
    assert isinstance(y, DTensor) and y.placements == (placement,)
    grads: tuple[Any, ...] = ()
    if recorded:
        torch.autograd.backward(y, distribute_tensor(dy, mesh, [placement]))
        grads = (x_d.grad, w_d.grad)
    _check("rms_norm", "float32", x, dy, params, y, grads)
