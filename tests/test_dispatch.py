"""Engine resolution: backend= > using > use > LAYERNORM_BACKEND > auto by array type; isolation of `using`."""

from __future__ import annotations

import asyncio
import contextvars
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from forked import WAIT_FOR_CHILD
from registered_plugin import registered

import layernorm
from layernorm import BackendError, DTypeError

X = np.arange(12, dtype=np.float32).reshape(3, 4)


def test_auto_dispatch_follows_the_array_type(recording: list[str]) -> None:
    assert layernorm.current_backend() == "auto"
    layernorm.layer_norm(X)
    assert recording == []  # numpy arrays went to the numpy backend


def test_backend_argument(recording: list[str]) -> None:
    layernorm.layer_norm(X, backend="recording")
    layernorm.rms_norm(X, backend="recording")
    layernorm.layer_norm_backward(X, X, backend="recording")
    layernorm.rms_norm_backward(X, X, backend="recording")
    assert recording == ["layer_norm", "rms_norm", "layer_norm_backward", "rms_norm_backward"]


def test_precedence_backend_over_using_over_use(recording: list[str]) -> None:
    try:
        layernorm.use("recording")
        assert layernorm.current_backend() == "recording"
        layernorm.layer_norm(X)
        assert recording == ["layer_norm"]
        with layernorm.using("numpy"):
            assert layernorm.current_backend() == "numpy"
            layernorm.layer_norm(X)
            assert recording == ["layer_norm"]
            layernorm.layer_norm(X, backend="recording")
            assert recording == ["layer_norm", "layer_norm"]
            with layernorm.using("recording"):
                layernorm.rms_norm(X)
            assert layernorm.current_backend() == "numpy"
        assert recording == ["layer_norm", "layer_norm", "rms_norm"]
        assert layernorm.current_backend() == "recording"
    finally:
        layernorm.use("auto")
    assert layernorm.current_backend() == "auto"


def test_using_auto_restores_auto_inside_use(recording: list[str]) -> None:
    try:
        layernorm.use("recording")
        with layernorm.using("auto"):
            layernorm.layer_norm(X)
        assert recording == []
    finally:
        layernorm.use("auto")


def test_naming_the_owner_of_x_takes_the_direct_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """backend=, using() and use() naming x's own backend run it as auto dispatch does, without `resolve`."""
    from layernorm_core import dispatch

    layernorm.layer_norm(X)  # the registry learns that numpy owns ndarray
    monkeypatch.setattr(dispatch, "resolve", lambda *_: pytest.fail("resolve was called"))
    expected = layernorm.layer_norm(X)
    np.testing.assert_array_equal(layernorm.layer_norm(X, backend="numpy"), expected)
    with layernorm.using("numpy"):
        np.testing.assert_array_equal(layernorm.rms_norm(X), layernorm.rms_norm(X, backend="auto"))
    try:
        layernorm.use("numpy")
        np.testing.assert_array_equal(layernorm.layer_norm_backward(X, X)[0], layernorm.layer_norm_backward(X, X)[0])
    finally:
        layernorm.use("auto")
    with pytest.raises(BackendError, match="unknown backend 'nope'"):
        layernorm.layer_norm(X, backend="nope")
    with pytest.raises(BackendError, match="unknown backend ''"):  # a name, however empty: never "not given"
        layernorm.layer_norm(X, backend="")


@pytest.mark.parametrize("name", [0, False, 1, ["numpy"], ("numpy",)], ids=repr)
def test_a_backend_name_that_is_no_string_is_a_backend_error(name: object) -> None:
    """Whether passed as backend=, to use() or to using(): not a TypeError (a list is unhashable), not "unknown"."""
    message = rf"a backend name must be a string; got {type(name).__name__}"
    with pytest.raises(BackendError, match=message):
        layernorm.layer_norm(X, backend=name)  # type: ignore[arg-type]
    with pytest.raises(BackendError, match=message):
        layernorm.rms_norm_backward(X, X, backend=name)  # type: ignore[arg-type]
    with pytest.raises(BackendError, match=message):
        layernorm.use(name)  # type: ignore[arg-type]
    with pytest.raises(BackendError, match=message), layernorm.using(name):  # type: ignore[arg-type]
        pass
    assert layernorm.current_backend() == "auto"


def test_use_rejects_unknown_names_at_once() -> None:
    with pytest.raises(BackendError, match="unknown backend 'nope'"):
        layernorm.use("nope")
    with pytest.raises(BackendError, match="unknown backend 'nope'"), layernorm.using("nope"):
        pass
    assert layernorm.current_backend() == "auto"


def test_using_is_isolated_per_thread(recording: list[str]) -> None:
    entered, release = threading.Event(), threading.Event()
    seen: dict[str, str] = {}

    def inside() -> None:
        with layernorm.using("recording"):
            entered.set()
            release.wait(5)
            seen["thread"] = layernorm.current_backend()
            layernorm.layer_norm(X)

    thread = threading.Thread(target=inside)
    thread.start()
    entered.wait(5)
    seen["main"] = layernorm.current_backend()
    layernorm.layer_norm(X)
    release.set()
    thread.join(5)
    assert seen == {"thread": "recording", "main": "auto"}
    assert recording == ["layer_norm"]


def test_using_is_isolated_per_asyncio_task(recording: list[str]) -> None:
    async def task(name: str, gate: asyncio.Event, other: asyncio.Event) -> str:
        with layernorm.using(name):
            gate.set()
            await other.wait()
            await asyncio.sleep(0)
            return layernorm.current_backend()

    async def main() -> list[str]:
        a, b = asyncio.Event(), asyncio.Event()
        return list(await asyncio.gather(task("recording", a, b), task("numpy", b, a)))

    assert asyncio.run(main()) == ["recording", "numpy"]
    assert layernorm.current_backend() == "auto"


def test_a_block_closed_in_another_thread_closes_quietly() -> None:
    """A generator suspended in a using() block and closed from another thread runs the block's exit in that
    thread's context, where no block is open: it raised IndexError there (9a04738 read the last open block).
    The block stays open in the context that opened it, so the test opens it in a copy of this one."""
    from layernorm_core import dispatch

    def suspended() -> Iterator[str]:
        with layernorm.using("numpy"):
            yield layernorm.current_backend()

    generator = suspended()
    raised: list[BaseException] = []

    def close() -> None:
        try:
            generator.close()
        except BaseException as exc:  # reported below, in the test's thread
            raised.append(exc)

    try:
        assert contextvars.copy_context().run(next, generator) == "numpy"
        closer = threading.Thread(target=close)
        closer.start()
        closer.join()
    finally:
        vars(dispatch._thread_scope).pop("name", None)  # this thread's, which the block set
    assert not raised, raised
    assert layernorm.current_backend() == "auto"


def test_blocks_of_interleaved_generators_close_as_they_close(recording: list[str]) -> None:
    """Generators share their caller's context, so their blocks close out of order: each reset the ContextVar to
    its value before the block, and once both had closed the first one's block was open in the caller for good
    (every later call of the process silently on its engine)."""

    def normalized(name: str) -> Iterator[str]:
        with layernorm.using(name):
            for _ in range(2):
                yield layernorm.current_backend()

    seen = list(zip(normalized("numpy"), normalized("recording"), strict=True))
    assert seen == [("numpy", "recording"), ("recording", "recording")]  # the innermost open block is in force
    assert layernorm.current_backend() == "auto"
    layernorm.layer_norm(X)
    assert recording == []


def test_a_context_copied_inside_a_block_keeps_it_after_the_block(recording: list[str]) -> None:
    """A task created in a block, or a copied context, runs in the block after it closed, as current_backend() says:
    calls went by array type instead once no block was open anywhere."""

    async def call() -> str:
        await asyncio.sleep(0)
        layernorm.layer_norm(X)
        return layernorm.current_backend()

    async def main() -> str:
        with layernorm.using("recording"):
            task = asyncio.create_task(call())
        return await task

    assert asyncio.run(main()) == "recording"
    assert recording == ["layer_norm"]
    with layernorm.using("recording"):
        copied = contextvars.copy_context()
    copied.run(layernorm.rms_norm, X)
    assert copied.run(layernorm.current_backend) == "recording"
    assert recording == ["layer_norm", "rms_norm"]
    layernorm.layer_norm(X)  # outside: by array type, on numpy
    assert recording == ["layer_norm", "rms_norm"]


def test_environment_variable_sets_the_default_and_use_overrides_it() -> None:
    code = (
        "import numpy as np, layernorm;"
        "print(layernorm.current_backend());"
        "layernorm.use('auto'); print(layernorm.current_backend())"
    )
    env = {**os.environ, "LAYERNORM_BACKEND": "numpy"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["numpy", "auto"]


def test_a_bad_name_in_the_environment_variable_is_named_as_its() -> None:
    """It is checked at the first call that uses it, in code that may never have written it: the error read as if
    that code had asked for the backend itself."""
    code = (
        "import numpy as np, layernorm\n"
        "for backend in (None, 'nope'):\n"
        "    try:\n"
        "        layernorm.layer_norm(np.ones((2, 3)), backend=backend)\n"
        "    except layernorm.BackendError as exc:\n"
        "        print(exc)\n"
        "layernorm.use('auto'); print(layernorm.layer_norm(np.ones((2, 3))).shape)\n"
    )
    env = {**os.environ, "LAYERNORM_BACKEND": "nope"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    from_variable, asked, after_use = out.stdout.splitlines()
    assert from_variable.startswith("unknown backend 'nope'; registered backends: ")
    assert from_variable.endswith(" (the name is LAYERNORM_BACKEND's; unset it or call layernorm.use(...))")
    assert asked.startswith("unknown backend 'nope'") and "LAYERNORM_BACKEND" not in asked
    assert after_use == "(2, 3)"


@pytest.mark.parametrize("value", ["auto", ""])
def test_environment_variable_auto_takes_the_fast_path(value: str) -> None:
    """LAYERNORM_BACKEND=auto is no default at all, as `use("auto")` is: calls take `local_engine`'s shortcut for
    auto dispatch (it was kept as the name "auto", which took the slower check of a name in force)."""
    code = "from layernorm_core import dispatch; print(dispatch._process_default, dispatch.current_backend())"
    env = {**os.environ, "LAYERNORM_BACKEND": value}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "auto"]


def test_unowned_array_type_needs_an_engine() -> None:
    class Foreign:
        shape = (2, 3)
        dtype = np.dtype(np.float32)

        def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
            return np.ones((2, 3), np.float32)

    with pytest.raises(BackendError, match=r"no backend owns arrays of type .*Foreign"):
        layernorm.layer_norm(Foreign())
    y = layernorm.layer_norm(Foreign(), backend="numpy")
    assert isinstance(y, np.ndarray) and y.shape == (2, 3)


class _Foreign:
    """A host array of a framework no backend owns."""

    def __init__(self, values: np.ndarray) -> None:
        self.values, self.shape, self.dtype = values, values.shape, values.dtype

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        return self.values


def test_unowned_x_beside_an_owned_argument_is_a_dtype_error() -> None:
    """Arguments of a backend's framework beside an x no backend owns were imported too: a torch weight that
    requires grad raised torch's RuntimeError, and a tf.Variable lost its gradient silently."""
    x = _Foreign(X)
    owned = r"x is a .*_Foreign, of a framework no backend owns, but another argument is a numpy array"
    with pytest.raises(DTypeError, match=owned):
        layernorm.layer_norm(x, np.ones(4, np.float32), backend="numpy")
    with pytest.raises(DTypeError, match="pass arrays of one framework"):
        layernorm.layer_norm_backward(X, x, backend="numpy")
    y = layernorm.layer_norm(x, _Foreign(np.ones(4, np.float32)), backend="numpy")  # one framework: imported
    np.testing.assert_array_equal(y, layernorm.layer_norm(X))


def test_unowned_x_beside_a_torch_weight_that_requires_grad() -> None:
    torch = pytest.importorskip("torch")
    weight = torch.ones(4, requires_grad=True)
    with pytest.raises(DTypeError, match="another argument is a torch array"):
        layernorm.layer_norm(_Foreign(X), weight, backend="torch")


class _Symbolic:
    """A placeholder of a framework no backend owns, with a shape and a dtype but no values (a KerasTensor)."""

    shape = (2, 4)
    dtype = np.dtype(np.float32)

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        raise ValueError("a _Symbolic holds no values")


class _ShapeOnly:
    """A shape and a dtype of a framework no backend owns, with no values and no array interface."""

    shape = (2, 4)
    dtype = np.dtype(np.float32)


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax", "tensorflow"])
def test_an_unowned_x_that_cannot_be_imported_is_a_dtype_error(backend: str) -> None:
    """The engine's import of it raised its framework's own error (a KerasTensor's ValueError), or, for an object
    with no array interface, NumPy made a 0-d object array of it and its kernel raised NumPy's ValueError."""
    pytest.importorskip(backend)
    with pytest.raises(DTypeError, match=rf"the '{backend}' backend cannot import a .*_Symbolic as an array: a _Sy"):
        layernorm.layer_norm(_Symbolic(), backend=backend)
    with pytest.raises(DTypeError, match=rf"the '{backend}' backend cannot import a .*_ShapeOnly as an array"):
        layernorm.layer_norm(_ShapeOnly(), backend=backend)


def test_an_unowned_x_of_sizes_it_does_not_know_is_imported() -> None:
    """A lazy array of a framework no backend owns (dask's) gives nan for sizes it has not computed: the import's
    shape was compared with it, and such an x refused (6006a58)."""

    class Lazy(_Foreign):
        def __init__(self, values: np.ndarray) -> None:
            super().__init__(values)
            self.shape = (float("nan"), values.shape[1])

    torch = pytest.importorskip("torch")  # the NumPy engine's kernels read x's sizes from the spec, nan included
    y = layernorm.layer_norm(Lazy(X), backend="torch")
    torch.testing.assert_close(y, layernorm.layer_norm(torch.from_numpy(X)), rtol=0, atol=0)


def test_subclass_of_an_owned_type_belongs_to_its_base_class_owner() -> None:
    class Tagged(np.ndarray):  # defined in this test module, whose package no backend declares
        pass

    x = np.linspace(-1.0, 2.0, 8, dtype=np.float32).reshape(2, 4).view(Tagged)
    assert type(x).__module__.partition(".")[0] != "numpy"
    np.testing.assert_array_equal(layernorm.layer_norm(x), layernorm.layer_norm(np.asarray(x)))


def test_a_plugin_for_a_subclass_package_takes_its_type_even_after_the_base_owner_did() -> None:
    """A NumPy subclass from a package no backend declares goes to numpy (its base class's owner) until a plugin
    declares that package; then to that plugin, as it would have in a fresh process (the cached owner stayed)."""
    import recording_backend

    from layernorm_core import BackendDeclaration, hookimpl

    boxed = type("Boxed", (np.ndarray,), {"__module__": "zzboxed"})

    class Plugin:
        @hookimpl
        def layernorm_backends(self) -> list[BackendDeclaration]:
            declared = BackendDeclaration(name="boxed", implementation="recording_backend", array_modules=("zzboxed",))
            return [declared]

    x = X.view(boxed)
    recording_backend.calls.clear()
    layernorm.layer_norm(x)
    assert recording_backend.calls == []  # numpy's
    with registered(Plugin(), "boxed-plugin"):
        layernorm.layer_norm(x)
        assert recording_backend.calls == ["layer_norm"]
    layernorm.layer_norm(x)
    assert recording_backend.calls == ["layer_norm"]  # numpy's again


def test_weight_of_another_framework_is_rejected() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(DTypeError, match=r"x is a numpy array but another argument is a torch\.Tensor"):
        layernorm.layer_norm(X, torch.ones(4))


def test_an_engine_without_the_dtype_refuses_it_before_converting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch-only install has no ml_dtypes, so NumPy holds no bfloat16: a bfloat16 tensor sent to the numpy engine
    is a DTypeError naming why, not the ModuleNotFoundError the conversion raised."""
    torch = pytest.importorskip("torch")
    from layernorm_core import dispatch
    from layernorm_core.registry import registry

    numpy_backend = registry.get("numpy")
    monkeypatch.setattr(numpy_backend, "_HAS_BFLOAT16", False)
    monkeypatch.setattr(dispatch, "_engine_dtypes", set())  # forget what earlier calls found

    def unreachable(x: object) -> None:
        raise AssertionError("converted before the check")

    monkeypatch.setattr(registry.get("torch"), "to_numpy", unreachable)
    refused = r"the 'numpy' backend does not compute bfloat16 here \(it computes float16, float32, float64\): NumPy"
    with pytest.raises(DTypeError, match=rf"{refused} holds bfloat16 only with ml_dtypes \(pip install ml_dtypes\)"):
        layernorm.layer_norm(torch.ones(2, 4, dtype=torch.bfloat16), backend="numpy")
    with layernorm.using("numpy"), pytest.raises(DTypeError, match=refused):
        layernorm.rms_norm(torch.ones(2, 4, dtype=torch.bfloat16))


def test_an_engine_without_the_dtype_refuses_an_unowned_x_before_importing_it(
    recording: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An array of a framework no backend owns crosses into the engine as any other framework's does: a dtype the
    engine does not compute is the core's DTypeError, not what its import raised (the example plugin of
    docs/plugins.md, whose from_foreign takes DLPack, gave NumPy's BufferError for a bfloat16 array)."""
    from dataclasses import replace

    import recording_backend

    from layernorm_core import dispatch

    float32_only = replace(dispatch.registry.info("numpy"), dtypes=("float32",))
    monkeypatch.setattr(recording_backend, "info", lambda: float32_only)
    monkeypatch.setattr(dispatch, "_engine_dtypes", set())  # forget what earlier calls found

    def unreachable(x: object) -> None:
        raise AssertionError("imported before the check")

    monkeypatch.setattr(recording_backend, "from_foreign", unreachable)
    refused = r"the 'recording' backend does not compute float16 here \(it computes float32\)"
    with pytest.raises(DTypeError, match=refused):
        layernorm.layer_norm(_Foreign(X.astype(np.float16)), backend="recording")
    with layernorm.using("recording"), pytest.raises(DTypeError, match=refused):
        layernorm.rms_norm_backward(_Foreign(X.astype(np.float16)), _Foreign(X.astype(np.float16)))
    assert recording == []


def test_a_plugin_registered_again_with_fewer_dtypes_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's dtypes are remembered per loaded module: a plugin unregistered, then registered under the same
    name by an implementation that no longer computes float16, refuses a float16 tensor."""
    torch = pytest.importorskip("torch")
    from dataclasses import replace
    from types import ModuleType

    import recording_backend

    from layernorm_core import BackendDeclaration, hookimpl

    def implementation(module_name: str, dtypes: tuple[str, ...]) -> str:
        module = ModuleType(module_name)
        module.__dict__.update({k: v for k, v in vars(recording_backend).items() if not k.startswith("__")})
        module.info = lambda: replace(recording_backend.info(), dtypes=dtypes)  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, module_name, module)
        return module_name

    class Plugin:
        def __init__(self, implementation: str) -> None:
            self.implementation = implementation

        @hookimpl
        def layernorm_backends(self) -> list[BackendDeclaration]:
            return [BackendDeclaration(name="reshaped", implementation=self.implementation, requires=("numpy",))]

    x = torch.ones(2, 4, dtype=torch.float16)
    with registered(Plugin(implementation("reshaped_wide", ("float16", "float32"))), "reshaped"):
        assert layernorm.layer_norm(x, backend="reshaped").dtype == torch.float16
    refused = r"the 'reshaped' backend does not compute float16 here \(it computes float32\)"
    with (
        registered(Plugin(implementation("reshaped_narrow", ("float32",))), "reshaped"),
        pytest.raises(DTypeError, match=refused),
    ):
        layernorm.layer_norm(x, backend="reshaped")


def test_an_array_on_a_device_that_reaches_an_engine_on_the_cpu_is_a_device_error() -> None:
    """A tf.Tensor on a GPU has no __dlpack__: the torch engine copied it through NumPy and computed on the CPU."""
    from types import SimpleNamespace

    from layernorm import DeviceError
    from layernorm_core import dispatch

    engine_on_the_host = SimpleNamespace(from_foreign=np.asarray, device_of=lambda array: "cpu")
    with pytest.raises(DeviceError, match=r"numpy.ndarray on gpu reached 'torch' on the CPU"):
        dispatch._convert(SimpleNamespace(), engine_on_the_host, X, "gpu", "torch")
    engine_on_the_gpu = SimpleNamespace(from_foreign=np.asarray, device_of=lambda array: "cuda:0")
    assert dispatch._convert(SimpleNamespace(), engine_on_the_gpu, X, "gpu", "torch") is not None


class _Placed(np.ndarray):
    """An array of a framework with two devices: ``placement`` names the one it lives on."""

    placement = "cpu"


_Placed.__module__ = "twodevices.arrays"


def _placed(values: np.ndarray, placement: str) -> _Placed:
    array = np.array(values, copy=True).view(_Placed)
    array.placement = placement
    return array


@pytest.fixture
def two_devices(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Register "twodevices": a backend of two devices (cpu, accel) that owns `_Placed` and records its calls."""
    import types

    from layernorm_numpy import backend as numpy_backend

    from layernorm_core import BackendDeclaration, hookimpl
    from layernorm_core.protocol import BackendInfo

    calls: list[str] = []
    module = types.ModuleType("twodevices_backend")
    module.info = lambda: BackendInfo(version="0", devices=("cpu", "accel"), dtypes=("float32",))  # type: ignore[attr-defined]
    module.device_of = lambda x: x.placement  # type: ignore[attr-defined]
    for name in (
        "is_tracked",
        "to_numpy",
        "from_numpy",
        "from_foreign",
        "rms_norm",
        "layer_norm_backward",
        "rms_norm_backward",
    ):
        setattr(module, name, getattr(numpy_backend, name))

    def layer_norm(x: _Placed, *args: object) -> np.ndarray:
        calls.append(x.placement)
        return numpy_backend.layer_norm(np.asarray(x), *args)

    module.layer_norm = layer_norm  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)

    class Plugin:
        @hookimpl
        def layernorm_backends(self) -> list[BackendDeclaration]:
            return [
                BackendDeclaration(name="twodevices", implementation=module.__name__, array_modules=("twodevices",))
            ]

    with registered(Plugin(), "twodevices-plugin"):
        yield calls


def test_a_framework_of_several_devices_compares_devices_on_every_call(two_devices: list[str]) -> None:
    """The per-call shortcut of a framework with several devices (torch with CUDA) runs only when every array is on
    x's device; otherwise the full checks raise DeviceError, however many calls went before."""
    from layernorm_core.registry import registry

    weight, bias = np.linspace(0.5, 1.5, 4, dtype=np.float32), np.linspace(-1.0, 1.0, 4, dtype=np.float32)
    expected = layernorm.layer_norm(X, weight, bias)
    for placement in ("accel", "cpu", "accel"):
        x = _placed(X, placement)
        y = layernorm.layer_norm(x, _placed(weight, placement), _placed(bias, placement))
        np.testing.assert_array_equal(y, expected)
        with pytest.raises(layernorm.DeviceError, match=f"x is on {placement} but another argument is on"):
            layernorm.layer_norm(
                x, _placed(weight, placement), _placed(bias, "cpu" if placement == "accel" else "accel")
            )
        with pytest.raises(DTypeError, match=r"x is a twodevices array but another argument is a numpy\.ndarray"):
            layernorm.layer_norm(x, weight)
    assert two_devices == ["accel", "cpu", "accel"]
    assert _Placed in registry.multi_device_engines and _Placed not in registry.single_device_engines


def test_an_array_bound_to_no_device_goes_with_the_bound_ones(two_devices: list[str]) -> None:
    """A bare kind ("accel") where a framework has several devices of it (JAX's uncommitted arrays) goes with any
    one of them; arrays bound to two ("accel:0", "accel:1"), or of two kinds, are a DeviceError."""
    weight, bias = np.linspace(0.5, 1.5, 4, dtype=np.float32), np.linspace(-1.0, 1.0, 4, dtype=np.float32)
    expected = layernorm.layer_norm(X, weight, bias)
    for placements in (("accel:0", "accel", "accel:0"), ("accel", "accel:1", "accel"), ("accel", "accel", "accel:1")):
        x, w, b = (_placed(v, p) for v, p in zip((X, weight, bias), placements, strict=True))
        np.testing.assert_array_equal(layernorm.layer_norm(x, w, b), expected)
    refused = {
        ("accel:0", "accel:1", "accel"): "x is on accel:0 but another argument is on accel:1",
        ("accel:0", "accel", "accel:1"): "x is on accel:0 but another argument is on accel:1",
        ("accel", "accel:0", "accel:1"): "an argument is on accel:0 but another argument is on accel:1",
        ("accel", "accel", "cpu"): "x is on accel but another argument is on cpu",
        ("accel:1", "cpu", "accel:1"): "x is on accel:1 but another argument is on cpu",
    }
    for placements, message in refused.items():
        x, w, b = (_placed(v, p) for v, p in zip((X, weight, bias), placements, strict=True))
        with pytest.raises(layernorm.DeviceError, match=message):
            layernorm.layer_norm(x, w, b)
    assert two_devices == ["accel:0", "accel", "accel"]


FORK_WHILE_LOADING = (
    """
import os, threading
import numpy as np
import layernorm
from layernorm_core.registry import registry

held, release = threading.Event(), threading.Event()


def hold() -> None:
    with registry._lock:  # as a thread loading another backend holds it
        held.set()
        release.wait()


threading.Thread(target=hold, daemon=True).start()
held.wait()
pid = os.fork()
if pid == 0:
    y = layernorm.layer_norm(np.ones((2, 4), np.float32), backend="numpy")
    os._exit(0 if y.shape == (2, 4) else 1)
"""
    + WAIT_FOR_CHILD
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_child_forked_while_a_thread_loads_a_backend_runs() -> None:
    """The registry's lock, held by a thread of the parent that the child does not have: the child's first lookup
    waited on it forever. (A child that imports the very framework that thread was importing still waits, in
    Python's import of that module.)"""
    out = subprocess.run([sys.executable, "-c", FORK_WHILE_LOADING], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["exit", "0"], out.stdout + out.stderr


FORK_WHILE_DISCOVERING = """
import os, threading, time
import numpy as np
import layernorm
from layernorm_core.registry import registry

first_done = threading.Event()
collect = registry._collect


def slow_collect(name, plugin):  # the next plugin's import is slow (a third-party plugin importing its framework)
    collect(name, plugin)
    first_done.set()
    time.sleep(0.5)


registry._collect = slow_collect
threading.Thread(target=registry.names, daemon=True).start()
first_done.wait()
pid = os.fork()
if pid == 0:
    names = registry.names()
    layernorm.layer_norm(np.ones((2, 4), np.float32), backend="numpy")
    print(" ".join(names), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
print(" ".join(registry.names()))
"""


FORK_WHILE_REGISTERING = """
import os, threading, warnings
from layernorm_core.registry import registry

inside, release = threading.Event(), threading.Event()
collect = registry._collect


def slow_collect(name, plugin):  # a thread registering a plugin at run time, its warnings held meanwhile
    collect(name, plugin)
    inside.set()
    release.wait()


class Empty:  # declares no backend: a PluginWarning
    pass


registry.names()
registry._collect = slow_collect
threading.Thread(target=registry.register_plugin, args=(Empty(), "first"), daemon=True).start()
inside.wait()
pid = os.fork()
if pid == 0:
    registry._collect = collect
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry.register_plugin(Empty(), "second")
    print(len(caught), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_child_forked_while_a_thread_registers_a_plugin_issues_its_own_warnings() -> None:
    """The parent's thread was holding the warnings of its registration: the child held its own after it, in a
    list nobody would issue."""
    out = subprocess.run([sys.executable, "-c", FORK_WHILE_REGISTERING], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["1"], out.stdout + out.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_child_forked_while_a_thread_registers_the_plugins_registers_them_all() -> None:
    """The child had the plugins the parent's thread had registered so far, and counted them as all: the others
    were unknown backends to it for good."""
    out = subprocess.run([sys.executable, "-c", FORK_WHILE_DISCOVERING], capture_output=True, text=True, timeout=120)
    child, parent = out.stdout.splitlines()
    assert child == parent and "numpy" in child.split(), out.stdout + out.stderr
