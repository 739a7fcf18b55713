"""layernorm.flax: NNX modules whose parameters and outputs match flax.nnx.LayerNorm / RMSNorm."""

from __future__ import annotations

import inspect
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

pytest.importorskip("jax")

import jax
import jax.numpy as jnp

pytest.importorskip("flax.nnx", reason="flax is not installed (pip install 'layernorm[flax]')")

import flax
from flax import nnx
from jax_compat import enable_x64

import layernorm
from layernorm.flax import LayerNorm, RMSNorm
from layernorm_core import check_forward, reference
from layernorm_core.tolerances import error_ratio, row_condition, tolerance


def _x(shape: tuple[int, ...], dtype: str = "float32", seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * 2 + 1, dtype=dtype)


def _random_params(module: nnx.Module, seed: int) -> None:
    state = nnx.state(module, nnx.Param)
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 8))
    nnx.update(module, jax.tree.map(lambda v: v + jax.random.normal(next(keys), v.shape, v.dtype), state))


def _param_names(module: nnx.Module) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) of each parameter; an old Flax's disabled one (a Param holding None) is left out."""
    params = {name: _value(v) for name, v in vars(module).items() if isinstance(v, nnx.Param)}
    return {name: (value.shape, str(value.dtype)) for name, value in params.items() if value is not None}


def _value(param: nnx.Param) -> Any:
    return param.get_value() if hasattr(param, "get_value") else param.value  # newer Flax deprecates .value


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="default"),
        pytest.param({"use_bias": False}, id="no-bias"),
        pytest.param({"use_scale": False, "param_dtype": jnp.bfloat16}, id="no-scale-bf16-params"),
    ],
)
def test_layer_norm_params_match_flax(kwargs: dict[str, Any]) -> None:
    ours, theirs = LayerNorm(24, rngs=nnx.Rngs(0), **kwargs), nnx.LayerNorm(24, rngs=nnx.Rngs(0), **kwargs)
    assert _param_names(ours) == _param_names(theirs)
    for a, b in zip(jax.tree.leaves(nnx.state(ours)), jax.tree.leaves(nnx.state(theirs)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_rms_norm_params_match_flax() -> None:
    ours, theirs = RMSNorm(24, rngs=nnx.Rngs(0)), nnx.RMSNorm(24, rngs=nnx.Rngs(0))
    assert _param_names(ours) == _param_names(theirs) == {"scale": ((24,), "float32")}


@pytest.mark.parametrize("num_features", [np.int64(6), jnp.int32(6)], ids=["numpy-int64", "jax-int32"])
@pytest.mark.parametrize(("ours", "theirs"), [(LayerNorm, nnx.LayerNorm), (RMSNorm, nnx.RMSNorm)], ids=["ln", "rms"])
def test_num_features_of_any_integer_type(ours: Any, theirs: Any, num_features: Any) -> None:
    """A NumPy or JAX integer (``np.prod(patch_shape)``, say), as Flax takes it: it was a TypeError
    (not iterable), taken for a tuple of sizes."""
    assert _param_names(ours(num_features, rngs=nnx.Rngs(0))) == _param_names(theirs(num_features, rngs=nnx.Rngs(0)))
    assert ours(num_features, rngs=nnx.Rngs(0))(_x((2, 6))).shape == (2, 6)


@pytest.mark.parametrize("sizes", [(2, 3), [2, 3], np.array([2, 3])], ids=["tuple", "list", "numpy"])
def test_num_features_of_several_sizes_is_the_parameters_shape(sizes: Any) -> None:
    axes = {"reduction_axes": (-2, -1), "feature_axes": (-2, -1)}
    assert _param_names(RMSNorm(sizes, rngs=nnx.Rngs(0), **axes)) == {"scale": ((2, 3), "float32")}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_layer_norm_outputs_match_flax_and_reference(dtype: str) -> None:
    theirs = nnx.LayerNorm(32, epsilon=1e-5, dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0))
    _random_params(theirs, seed=1)
    ours = LayerNorm(32, epsilon=1e-5, dtype=jnp.dtype(dtype), rngs=nnx.Rngs(5))
    nnx.update(ours, nnx.state(theirs))  # a Flax state loads into our module as is
    x = _x((6, 32), dtype)
    y = ours(x)
    assert y.dtype == jnp.dtype(dtype) == theirs(x).dtype
    assert theirs.scale is not None and theirs.bias is not None
    w, b = np.asarray(theirs.scale[...]), np.asarray(theirs.bias[...])
    xn = np.asarray(x)
    spec = check_forward("layer_norm", xn, w, b, -1, 1e-5)
    assert error_ratio(np.asarray(y), reference.layer_norm(xn, w, b, spec)[0], tolerance(dtype, "output"),
                       row_condition(xn, spec)) <= 1  # fmt: skip
    tol = 1e-5 if dtype == "float32" else 2**-7
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(theirs(x), np.float32), rtol=tol, atol=tol)


def test_dtype_none_promotes_like_flax() -> None:
    x = _x((3, 8), "bfloat16")
    ours, theirs = LayerNorm(8, rngs=nnx.Rngs(0)), nnx.LayerNorm(8, rngs=nnx.Rngs(0))
    assert ours(x).dtype == theirs(x).dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(theirs(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.int32, "bool", jnp.complex64])
@pytest.mark.parametrize(("ours", "theirs"), [(LayerNorm, nnx.LayerNorm), (RMSNorm, nnx.RMSNorm)], ids=["ln", "rms"])
def test_a_dtype_that_is_not_floating_is_refused(ours: Any, theirs: Any, dtype: Any) -> None:
    """Flax's refuses an integer or bool ``dtype`` (ValueError: must be inexact); ours returned float32, another
    dtype than the one asked for. A DTypeError now, naming the dtype, as for a complex one (which Flax takes)."""
    if dtype is not jnp.complex64:
        with pytest.raises(ValueError, match="inexact"):
            theirs(8, dtype=dtype, rngs=nnx.Rngs(0))(_x((2, 8)))
    with pytest.raises(layernorm.DTypeError, match=f"dtype must be a floating dtype .*; got {jnp.dtype(dtype).name}"):
        ours(8, dtype=dtype, rngs=nnx.Rngs(0))(_x((2, 8)))


@pytest.mark.parametrize("ours", [LayerNorm, RMSNorm], ids=["ln", "rms"])
def test_a_floating_dtype_outside_the_table_is_blamed_on_dtype(ours: Any) -> None:
    """A float8 module ``dtype`` is floating to JAX, and passed the module's check: x, cast to it, was then refused
    as "x must have a floating dtype ...; got float8_e4m3fn", of a float32 x. The module's dtype is named now."""
    with pytest.raises(layernorm.DTypeError, match=r"^dtype must be a floating dtype .*; got float8_e4m3fn$"):
        ours(8, dtype=jnp.float8_e4m3fn, rngs=nnx.Rngs(0))(_x((2, 8)))


@pytest.mark.parametrize("module", ["LayerNorm", "RMSNorm"])
@pytest.mark.parametrize("affine", [True, False], ids=["params", "no-params"])
@pytest.mark.parametrize("given", ["numpy", "list", "int"])
def test_array_likes_are_taken_as_flax_takes_them(given: str, affine: bool, module: str) -> None:
    """A NumPy array, a nested list, integers: a JAX array out, of Flax's dtype and values (ints become float32)."""
    values = np.random.default_rng(5).standard_normal((3, 8)).astype(np.float32)
    x = {"numpy": values, "list": values.tolist(), "int": np.arange(24).reshape(3, 8)}[given]
    kwargs: dict[str, Any] = {"use_scale": affine} | ({"use_bias": affine} if module == "LayerNorm" else {})
    ours = {"LayerNorm": LayerNorm, "RMSNorm": RMSNorm}[module](8, rngs=nnx.Rngs(0), **kwargs)
    theirs_kwargs = kwargs | ({"use_fast_variance": False} if module == "LayerNorm" else {})
    theirs = getattr(nnx, module)(8, rngs=nnx.Rngs(0), **theirs_kwargs)
    got = ours(x)
    try:
        expected = theirs(x)
    except TypeError:
        if given != "list":
            raise
        expected = theirs(values)  # Flax 0.10.0 refuses a nested list (jnp.result_type of it); later Flax takes it
    assert isinstance(got, jax.Array) and got.dtype == expected.dtype
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("module", ["LayerNorm", "RMSNorm"])
@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_parameters_restored_as_numpy_arrays_run_as_flax_runs_them(module: str, param_dtype: str) -> None:
    """A host copy of the state (jax.device_get, flax.serialization.from_bytes) holds NumPy arrays: Flax runs it."""
    ours = {"LayerNorm": LayerNorm, "RMSNorm": RMSNorm}[module](8, param_dtype=param_dtype, rngs=nnx.Rngs(0))
    theirs_kwargs: dict[str, Any] = {"use_fast_variance": False} if module == "LayerNorm" else {}
    theirs = getattr(nnx, module)(8, param_dtype=param_dtype, rngs=nnx.Rngs(0), **theirs_kwargs)
    for m in (ours, theirs):
        _random_params(m, seed=3)
        nnx.update(m, jax.device_get(nnx.state(m)))
        assert isinstance(_value(m.scale), np.ndarray)
    x = _x((3, 8))
    got, expected = ours(x), theirs(x)
    assert isinstance(got, jax.Array) and got.dtype == expected.dtype
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("module", ["LayerNorm", "RMSNorm"])
def test_parameters_of_another_dtype_take_the_core_rule(module: str) -> None:
    """dtype=bfloat16 with float64 parameters: they run as float32 (`param_dtype_for`), as the Keras layers and
    torch.nn.RMSNorm's drop-in cast them, not rounded to bfloat16 first."""
    with enable_x64(True):
        ours = {"LayerNorm": LayerNorm, "RMSNorm": RMSNorm}[module](
            64, dtype=jnp.bfloat16, param_dtype=jnp.float64, rngs=nnx.Rngs(0)
        )
        _random_params(ours, seed=4)
        x = _x((16, 64), "float32")
        params = [
            jnp.asarray(_value(p), jnp.float32) for p in (ours.scale, getattr(ours, "bias", None)) if p is not None
        ]
        norm = layernorm.layer_norm if module == "LayerNorm" else layernorm.rms_norm
        expected = norm(x.astype(jnp.bfloat16), *params, eps=ours.epsilon)
        got = ours(x)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(expected, np.float32))


def test_axes_of_any_integer_type() -> None:
    x = _x((3, 8), "float32")
    got = LayerNorm(8, reduction_axes=np.int64(-1), feature_axes=[np.int32(-1)], rngs=nnx.Rngs(0))(x)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(LayerNorm(8, rngs=nnx.Rngs(0))(x)))


@pytest.mark.parametrize("axes", ["-1", b"1"], ids=["str", "bytes"])
@pytest.mark.parametrize("argument", ["reduction_axes", "feature_axes"])
@pytest.mark.parametrize("module", ["LayerNorm", "RMSNorm"])
def test_axes_given_as_a_string_are_the_functions_argument_error(module: str, argument: str, axes: Any) -> None:
    """A string is iterable, and the modules split it into characters: reduction_axes="-1" was refused as "axis must
    be an int or a tuple of ints; got ('-', '1')", a value the caller never gave. The functions' message now."""
    function = {"LayerNorm": layernorm.layer_norm, "RMSNorm": layernorm.rms_norm}[module]
    x = _x((2, 8))
    with pytest.raises(layernorm.ArgumentError) as expected:
        function(x, axis=axes)
    ours = {"LayerNorm": LayerNorm, "RMSNorm": RMSNorm}[module](8, rngs=nnx.Rngs(0), **{argument: axes})
    with pytest.raises(layernorm.ArgumentError) as got:
        ours(x)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("module", ["LayerNorm", "RMSNorm"])
def test_axes_given_as_numpy_arrays_and_no_feature_axes_as_flax_takes_them(module: str) -> None:
    """Flax takes any iterable of ints (``np.arange(1, x.ndim)``, which was an ArgumentError here), and no feature
    axes at all (a ShapeError here): then one parameter of num_features 1 scales and shifts every value."""
    x = _x((3, 4, 5), seed=4)
    ours = getattr(layernorm.flax, module)
    theirs = nnx.LayerNorm if module == "LayerNorm" else nnx.RMSNorm
    by_array = ours(20, reduction_axes=np.arange(1, 3), feature_axes=np.arange(1, 3), rngs=nnx.Rngs(0))
    by_tuple = ours(20, reduction_axes=(1, 2), feature_axes=(1, 2), rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(by_array(x)), np.asarray(by_tuple(x)))
    kwargs = {"epsilon": 1e-5, "reduction_axes": (1, 2), "feature_axes": ()}
    flax_module = theirs(1, rngs=nnx.Rngs(0), **kwargs)
    _random_params(flax_module, seed=5)
    scalar = ours(1, rngs=nnx.Rngs(1), **kwargs)
    nnx.update(scalar, nnx.state(flax_module))
    np.testing.assert_allclose(np.asarray(scalar(x)), np.asarray(flax_module(x)), rtol=1e-5, atol=1e-5)


def test_rms_norm_matches_flax_over_two_axes() -> None:
    theirs = nnx.RMSNorm(16, epsilon=1e-5, rngs=nnx.Rngs(0))
    _random_params(theirs, seed=2)
    ours = RMSNorm(16, epsilon=1e-5, rngs=nnx.Rngs(0))
    nnx.update(ours, nnx.state(theirs))
    x = _x((4, 5, 16), seed=3)
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(theirs(x)), rtol=1e-5, atol=1e-6)
    both = RMSNorm((5, 16), reduction_axes=(1, 2), feature_axes=(1, 2), rngs=nnx.Rngs(0))
    assert both.scale is not None and both.scale[...].shape == (5, 16)
    xn = np.asarray(x)
    spec = check_forward("rms_norm", xn, None, None, (1, 2), 1e-6)
    assert error_ratio(np.asarray(both(x)), reference.rms_norm(xn, None, spec)[0], tolerance("float32", "output")) <= 1


def test_rms_norm_forward_mode_matches_flax() -> None:
    """jax.jvp through the module, in x and in the scale (nnx.split: the parameters as an input), as through Flax's
    own RMSNorm, which JAX differentiates op by op."""
    theirs = nnx.RMSNorm(16, epsilon=1e-5, rngs=nnx.Rngs(0))
    _random_params(theirs, seed=4)
    ours = RMSNorm(16, epsilon=1e-5, rngs=nnx.Rngs(0))
    nnx.update(ours, nnx.state(theirs))
    x, dx = _x((4, 5, 16), seed=5), _x((4, 5, 16), seed=6)

    def tangent(module: nnx.Module) -> jax.Array:
        graph, params = nnx.split(module)
        dparams = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
        return jax.jvp(lambda p, x: nnx.merge(graph, p)(x), (params, x), (dparams, dx))[1]

    np.testing.assert_allclose(np.asarray(tangent(ours)), np.asarray(tangent(theirs)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("num_features", "feature_axes"),
    [
        pytest.param(16, -1, id="channels-of-two-reduced-axes"),
        pytest.param(5, 1, id="the-first-reduced-axis"),
        pytest.param(80, (1, 2), id="both-reduced-axes-flat"),
    ],
)
@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_feature_axes_lay_parameters_as_flax_does(kind: str, num_features: int, feature_axes: Any) -> None:
    """A Flax state with parameters along ``feature_axes`` loads unchanged; outputs and gradients match Flax's."""
    kwargs = {"epsilon": 1e-5, "reduction_axes": (1, 2), "feature_axes": feature_axes}
    if kind == "layer_norm":
        theirs: nnx.Module = nnx.LayerNorm(num_features, use_fast_variance=False, rngs=nnx.Rngs(0), **kwargs)
        ours: nnx.Module = LayerNorm(num_features, rngs=nnx.Rngs(1), **kwargs)
    else:
        theirs, ours = (
            nnx.RMSNorm(num_features, rngs=nnx.Rngs(0), **kwargs),
            RMSNorm(num_features, rngs=nnx.Rngs(1), **kwargs),
        )
    _random_params(theirs, seed=7)
    assert _param_names(ours) == _param_names(theirs)
    nnx.update(ours, nnx.state(theirs))
    x, target = _x((4, 5, 16), seed=8), _x((4, 5, 16), seed=9)
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(theirs(x)), rtol=1e-5, atol=1e-5)

    def loss(m: nnx.Module) -> jax.Array:
        return jnp.mean((m(x) - target) ** 2)

    for got, want in zip(jax.tree.leaves(nnx.grad(loss)(ours)), jax.tree.leaves(nnx.grad(loss)(theirs)), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)


def test_feature_axes_outside_the_reduction_or_of_another_size_are_shape_errors() -> None:
    x = _x((4, 5, 16))
    with pytest.raises(layernorm.ShapeError, match="must be among reduction_axes"):
        LayerNorm(5, reduction_axes=-1, feature_axes=1, rngs=nnx.Rngs(0))(x)
    with pytest.raises(layernorm.ShapeError, match="does not fit feature_axes"):
        RMSNorm(15, reduction_axes=(1, 2), rngs=nnx.Rngs(0))(x)
    with pytest.raises(layernorm.ShapeError, match="does not fit feature_axes"):  # (5, 16) is not along axis -1
        RMSNorm((5, 16), reduction_axes=(1, 2), rngs=nnx.Rngs(0))(x)


@pytest.mark.parametrize("module", ["LayerNorm", "RMSNorm"])
def test_a_promote_dtype_function_is_called_as_flax_calls_it(module: str) -> None:
    """Flax's constructor argument ``promote_dtype`` (it was a TypeError): called on (x, *params) with the module's
    dtype; x and the parameters are what it returns. Flax's own default gives Flax's output."""
    from flax.nnx.nn import dtypes as flax_dtypes

    calls: list[tuple[int, Any]] = []

    def to_float32(arrays: tuple[Any, ...], dtype: Any = None) -> list[Any]:
        calls.append((len(arrays), dtype))
        return [None if a is None else jnp.asarray(a, jnp.float32) for a in arrays]

    x = _x((4, 16), "bfloat16", seed=6)
    kwargs = {"epsilon": 1e-5, "rngs": nnx.Rngs(0)}
    promoted = getattr(layernorm.flax, module)(16, promote_dtype=to_float32, **kwargs)
    _random_params(promoted, seed=7)
    y = promoted(x)
    assert calls == [(3 if module == "LayerNorm" else 2, None)] and y.dtype == jnp.float32
    plain = getattr(layernorm.flax, module)(16, **kwargs)
    nnx.update(plain, nnx.state(promoted))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(plain(x.astype(jnp.float32))))
    if "promote_dtype" not in inspect.signature(getattr(nnx, module).__init__).parameters:
        pytest.skip(f"flax {flax.__version__}'s nnx.{module} has no promote_dtype to compare with")
    extra = {"use_fast_variance": False} if module == "LayerNorm" else {}
    for dtype, tol in ((None, 1e-5), (jnp.bfloat16, 2 * 2.0**-8)):  # bfloat16: Flax's rounds the params to it
        theirs = getattr(nnx, module)(16, dtype=dtype, promote_dtype=flax_dtypes.promote_dtype, **extra, **kwargs)
        ours = getattr(layernorm.flax, module)(16, dtype=dtype, promote_dtype=flax_dtypes.promote_dtype, **kwargs)
        nnx.update(theirs, nnx.state(promoted))
        nnx.update(ours, nnx.state(promoted))
        got, expected = ours(x), theirs(x)
        assert got.dtype == expected.dtype == (dtype or jnp.float32)
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected, np.float32), rtol=tol, atol=tol)


def test_parameter_metadata_reaches_the_params() -> None:
    layer = LayerNorm(8, scale_metadata={"tag": "s"}, bias_metadata={"tag": "b"}, rngs=nnx.Rngs(0))
    assert layer.scale is not None and layer.bias is not None
    assert (layer.scale.tag, layer.bias.tag) == ("s", "b")
    rms = RMSNorm(8, scale_metadata={"tag": "r"}, rngs=nnx.Rngs(0))
    assert rms.scale is not None and rms.scale.tag == "r"


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"axis_name": "batch"}, id="axis-name"),
        pytest.param({"axis_index_groups": [[0, 1]]}, id="axis-index-groups"),
        pytest.param({"use_fast_variance": True}, id="fast-variance"),
    ],
)
def test_what_flax_offers_and_layernorm_does_not_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="not offered"):
        LayerNorm(8, rngs=nnx.Rngs(0), **kwargs)
    if "use_fast_variance" in kwargs:  # no mean, so the flag changes nothing for rms_norm
        assert RMSNorm(8, rngs=nnx.Rngs(0), **kwargs)(_x((2, 8))).shape == (2, 8)
    else:
        with pytest.raises(ValueError, match="not offered"):
            RMSNorm(8, rngs=nnx.Rngs(0), **kwargs)


@pytest.mark.parametrize(("ours", "theirs"), [(LayerNorm, nnx.LayerNorm), (RMSNorm, nnx.RMSNorm)], ids=["ln", "rms"])
def test_flax_attributes_read_as_flax_defaults(ours: Any, theirs: Any) -> None:
    """Code written for flax.nnx reads these attributes; ours hold what Flax's hold by default (they raised
    AttributeError)."""
    ours, theirs = ours(8, rngs=nnx.Rngs(0)), theirs(8, rngs=nnx.Rngs(0))
    for name in ("axis_name", "axis_index_groups", "epsilon", "reduction_axes", "feature_axes", "use_scale"):
        assert getattr(ours, name) == getattr(theirs, name), name


def test_module_trains_under_nnx_jit_and_grad() -> None:
    model = LayerNorm(12, rngs=nnx.Rngs(0))
    reference_model = nnx.LayerNorm(12, rngs=nnx.Rngs(0))
    x, target = _x((8, 12), seed=4), _x((8, 12), seed=5)

    def loss(m: nnx.Module) -> jax.Array:
        return jnp.mean((m(x) - target) ** 2)

    grads = nnx.jit(nnx.grad(loss))(model)
    expected = nnx.grad(loss)(reference_model)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)


def test_import_without_flax_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['flax'] = None; sys.modules['flax.nnx'] = None\n"
        "try:\n    import layernorm.flax\nexcept ImportError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "ERR" in out.stdout and "pip install 'layernorm[flax]'" in out.stdout, out.stdout + out.stderr


def _not_dense_inputs() -> list[Any]:
    from jax.experimental import sparse

    dense = _x((2, 8))
    masked = np.ma.masked_array(np.asarray(dense), mask=np.eye(2, 8, dtype=bool))
    return [sparse.BCOO.fromdense(dense), masked, jax.ShapeDtypeStruct((2, 8), jnp.float32)]


@pytest.mark.parametrize("x", _not_dense_inputs(), ids=["bcoo", "numpy-masked", "shape-spec"])
@pytest.mark.parametrize("module", ["LayerNorm", "RMSNorm"])
def test_an_x_that_is_not_dense_is_the_functions_dtype_error(module: str, x: Any) -> None:
    """A sparse or masked x, or a shape spec, is the DTypeError that layer_norm and rms_norm give it, with their
    message. The modules handed it to jnp.asarray first: JAX's ValueError ("setting an array element with a
    sequence", "numpy masked arrays are not supported") or a TypeError from float()."""
    function = {"LayerNorm": layernorm.layer_norm, "RMSNorm": layernorm.rms_norm}[module]
    with pytest.raises(layernorm.DTypeError) as expected:
        function(x)
    ours = {"LayerNorm": LayerNorm, "RMSNorm": RMSNorm}[module](8, rngs=nnx.Rngs(0))
    with pytest.raises(layernorm.DTypeError) as got:
        ours(x)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("x_dtype", ["float32", "int32"])
@pytest.mark.parametrize("module", ["LayerNorm", "RMSNorm"])
def test_complex_parameters_are_blamed_not_x(module: str, x_dtype: str) -> None:
    """param_dtype=complex64 without a dtype promotes x to complex64 (Flax's computes complex); it was refused as "x
    must have a floating dtype ...; got complex64" of a float32 or integer x. The parameters are named now."""
    ours = {"LayerNorm": LayerNorm, "RMSNorm": RMSNorm}[module](8, param_dtype=jnp.complex64, rngs=nnx.Rngs(0))
    expected = (
        r"^the parameters \(complex64\) promote a "
        + x_dtype
        + r" x to complex64, which layernorm does not compute \(float16, bfloat16, float32, float64\)"
    )
    with pytest.raises(layernorm.DTypeError, match=expected):
        ours(_x((2, 8)).astype(x_dtype))


@pytest.mark.parametrize("module", ["LayerNorm", "RMSNorm"])
def test_a_complex_x_is_still_blamed_on_x(module: str) -> None:
    ours = {"LayerNorm": LayerNorm, "RMSNorm": RMSNorm}[module](8, rngs=nnx.Rngs(0))
    with pytest.raises(layernorm.DTypeError, match=r"^x must have a floating dtype .*; got complex64$"):
        ours(_x((2, 8)).astype(jnp.complex64))
