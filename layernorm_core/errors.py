"""The typed errors every backend raises, checked once in the core before any backend runs."""

from __future__ import annotations


def type_name(kind: type) -> str:
    """``module.qualname`` of a type: how messages name an argument's type, and how exclusions name a class."""
    return f"{kind.__module__}.{kind.__qualname__}"


class LayerNormError(Exception):
    """Base class of the errors raised for bad input to the functions and to the modules' calls.

    The four functions, `layernorm.use` and `layernorm.using`, the registry, and the calls of the torch, Flax and
    Keras modules raise its subclasses. Not LayerNormErrors: the ValueError and TypeError with which the Keras and
    Flax modules refuse constructor arguments they do not offer (``rms_scaling=True``, a non-int ``axis``;
    ``axis_name``, ``axis_index_groups``, ``use_fast_variance=True``), the ValueError of Keras's
    ``compute_output_shape`` and the IndexError of a Keras layer's build for an axis out of range (as Keras's), the
    ImportError of `missing_framework_error`, and the frameworks' own errors; `PluginWarning` is a UserWarning.
    """

    # Exception's own, so that every subclass's __init__ is Exception.__init__ (not ValueError's or TypeError's:
    # the same C function, another object). TensorFlow's AutoGraph re-raises an error from inside a tf.function
    # as its own type only then; otherwise it raises a StagingError, which is no LayerNormError.
    __init__ = Exception.__init__


class ShapeError(LayerNormError, ValueError):
    """An array has the wrong shape, or ``axis`` names axes that do not fit ``x``."""


class ArgumentError(LayerNormError, ValueError):
    """A scalar argument is out of its domain (``eps`` negative or not finite, stats half given)."""


class DTypeError(LayerNormError, TypeError):
    """An array has a dtype (or array type) the operation does not accept."""


class BackendError(LayerNormError, RuntimeError):
    """A backend is unknown, not installed, failed to load, or cannot take this array."""


class DeviceError(LayerNormError, RuntimeError):
    """Arrays of one call live on different devices, or a device is not available."""


def not_dense_error(array: str, backend: str, excluded: str, remedy: str) -> DTypeError:
    """The DTypeError for an argument that is not a dense array, worded alike by the core and every backend.

    ``array`` names it (its type, with its layout where the type alone does not tell), ``excluded`` what the
    ``backend`` excludes that it belongs to, ``remedy`` how to make it dense.
    """
    return DTypeError(
        f"{array} is not a dense array (the {backend!r} backend excludes {excluded}: masked, sparse and ragged "
        f"types, and shape specs); pass a dense array, such as {remedy}"
    )


def uncomputed_dtype_error(backend: str, dtype: str, computed: tuple[str, ...], note: str | None) -> DTypeError:
    """The DTypeError for an array of ``dtype`` that ``backend`` does not compute here.

    Worded alike by the core (arrays crossing into the backend) and a backend (its own arrays): ``computed`` lists
    what it does, ``note`` says why not (its `BackendInfo` note for ``dtype``).
    """
    return DTypeError(
        f"the {backend!r} backend does not compute {dtype} here (it computes {', '.join(computed)})"
        + (f": {note}" if note else "")
    )


def missing_framework_error(module: str, needs: str, missing: ImportError, install: str) -> ImportError:
    """The ImportError of a layer module (``layernorm.torch``, ``.flax``, ``.keras``) whose framework is missing.

    ``needs`` names what the module needs, ``missing`` is the import's own error (its ``name`` is the module not
    found), ``install`` says how to get it.
    """
    return ImportError(f"{module} needs {needs} ({missing.name} is missing): {install}", name=missing.name)


def not_a_bool_error(name: str, value: object) -> ArgumentError:
    """The error for a flag given anything but True or False (a string, None, a traced or NumPy boolean)."""
    return ArgumentError(f"{name} must be True or False; got {value!r}")
