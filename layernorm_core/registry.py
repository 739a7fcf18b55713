"""The backend registry: finds plugins through entry points (pluggy), loads backends lazily, caches lookups.

pluggy is used once, to collect declarations; per call, finding a backend is a dictionary lookup.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import threading
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, cast

import pluggy

from layernorm_core import hookspecs
from layernorm_core.errors import BackendError, not_dense_error, type_name
from layernorm_core.protocol import REQUIRED_FUNCTIONS, BackendDeclaration, BackendInfo
from layernorm_core.tracing import constant_for_dynamo

_HOOK = hookspecs.layernorm_backends.__name__
_UNUSABLE_NAMES = ("", "auto")


class PluginWarning(UserWarning):
    """A plugin failed to load or declared something unusable; every other backend keeps working."""


@dataclass(frozen=True)
class BackendStatus:
    """One row of `layernorm.backends()`: a registered backend, whether it can run here, and why not."""

    name: str
    available: bool
    version: str | None
    devices: tuple[str, ...]
    dtypes: tuple[str, ...]
    reason: str | None
    plugin: str
    description: str
    """The declaration's one line on what the backend is (`BackendDeclaration.description`)."""


class Registry:
    """Every declared backend by name, and the loaded implementation modules."""

    def __init__(self, *, entry_point_group: str = hookspecs.ENTRY_POINT_GROUP) -> None:
        self._group = entry_point_group
        self._lock = threading.RLock()
        self._manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._manager.add_hookspecs(hookspecs)
        self._discovered = False
        self._discovering = False
        """True while a thread registers the entry points: a child forked then holds only some of them."""
        self._declarations: dict[str, BackendDeclaration] = {}
        self._plugin_of: dict[str, str] = {}
        self._distribution_of: dict[str, str] = {}
        """Plugin name -> the distribution whose entry point it is (absent for plugins registered at run time)."""
        self._loaded: dict[str, ModuleType] = {}
        self._failed: dict[str, str] = {}
        """Entry-point plugin name -> why it failed to load or to declare its backends (the PluginWarning's message)."""
        self._owner_by_module: dict[str, str] = {}
        self._excluded_by_module: dict[str, str] = {}
        self._owner_by_type: dict[type, str | None] = {}
        self._multi_device: dict[str, bool] = {}
        self._loaded_owner_by_type: dict[type, str] = {}
        self.single_device_engines: dict[type, ModuleType] = {}
        """Array type -> its owner's loaded module, for owners that report one device: the per-call fast path
        (read-only outside the registry, and not read while torch.compile traces; filled by `loaded_owner`)."""
        self.multi_device_engines: dict[type, ModuleType] = {}
        """As `single_device_engines`, for owners that report several devices (torch with CUDA, JAX with two)."""
        self._held: list[str] | None = None
        """The PluginWarnings of the registration under way, issued when it ends (`_warnings_held`)."""

    # -- discovery -------------------------------------------------------------------------------------------

    def register_plugin(self, plugin: Any, name: str | None = None) -> str:
        """Register a plugin object or module at run time, exactly as an entry point would be; return its name.

        Its declarations are checked as an entry point's: one that is unusable or taken is dropped with a
        `PluginWarning`, and a plugin that declares no backend is warned about and not kept. Its implementation
        modules are not imported here: one that fails to import or to meet the contract fails when first used.

        Raises:
            BackendError: a plugin is already registered under ``name``; this object is registered already (under
                another name: the message gives it); pluggy refuses the plugin; or ``name`` is blocked.

        """
        with self._lock:
            self._discover()
            if name is not None and self._manager.get_plugin(name) is not None:
                raise BackendError(f"plugin {name!r} is already registered")
            registered_as = self._manager.get_name(plugin)
            if registered_as is not None:
                raise BackendError(
                    f"plugin {name or plugin!r} cannot be registered: it is registered as {registered_as!r}"
                )
            try:
                plugin_name = self._manager.register(plugin, name=name)
            except (ValueError, pluggy.PluginValidationError) as exc:
                reason = str(exc).partition("\n")[0]  # pluggy's next lines list every plugin registered
                raise BackendError(f"plugin {name or plugin!r} cannot be registered: {reason}") from exc
            if plugin_name is None:
                raise BackendError(f"plugin {name!r} is blocked")
            with self._warnings_held():
                self._collect(plugin_name, plugin)
                self._failed.pop(plugin_name, None)  # its caller has the warning: only installed plugins' are kept
            return plugin_name

    def is_registered(self, name: str) -> bool:
        """Whether a plugin is registered under ``name`` (not dropped for declaring no backend)."""
        with self._lock:
            self._discover()
            return self._manager.get_plugin(name) is not None

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin registered under ``name`` and the backends it declared; BackendError if there is none."""
        with self._lock:
            if not self.is_registered(name):
                raise BackendError(f"no plugin is registered under {name!r}")
            self._manager.unregister(name=name)
            self._distribution_of.pop(name, None)
            for backend in [b for b, p in self._plugin_of.items() if p == name]:
                del self._declarations[backend], self._plugin_of[backend]
                self._loaded.pop(backend, None)
                self._multi_device.pop(backend, None)
            self._rebuild_owners()

    def _discover(self) -> None:
        """Load and register every entry point of the group, in `_load_order`; a clash of names keeps the first."""
        if self._discovered:
            return
        self._discovered = self._discovering = True
        try:
            with self._warnings_held():
                self._register_entry_points()
        finally:
            self._discovering = False

    @contextmanager
    def _warnings_held(self) -> Iterator[None]:
        """Hold the block's PluginWarnings, and issue them once it has registered every plugin it registers.

        A warning that a filter turns into an error (``python -W error``, pytest's ``filterwarnings = ["error"]``)
        is then raised after the registration, not half-way through it: there it left every later entry point
        unregistered for the rest of the process. Blocks nest: the outermost one issues them.
        """
        if self._held is not None:
            yield
            return
        held: list[str] = []
        self._held = held
        try:
            yield
        finally:
            self._held = None
        for message in held:
            _issue_warning(message, stacklevel=2)

    def _warn(self, message: str) -> None:
        """Issue a PluginWarning, or hold it while `_warnings_held` does."""
        if self._held is None:
            _issue_warning(message)
        else:
            self._held.append(message)

    def _register_entry_points(self) -> None:
        kept: dict[str, importlib.metadata.EntryPoint] = {}
        for entry_point in _load_order(importlib.metadata.entry_points(group=self._group)):
            first = kept.setdefault(entry_point.name, entry_point)
            if first is not entry_point:
                if first != entry_point:  # the same entry point found twice is no clash
                    self._warn(
                        f"plugin {entry_point.name!r} ({_origin(entry_point)}) is not loaded: plugin "
                        f"{first.name!r} ({_origin(first)}) has that entry-point name and is kept"
                    )
                continue
            try:
                plugin = entry_point.load()
                self._manager.register(plugin, name=entry_point.name)
            except Exception as exc:
                self._failed[entry_point.name] = (
                    f"plugin {entry_point.name!r} ({entry_point.value}) failed to load: {exc!r}"
                )
                self._warn(self._failed[entry_point.name])
                continue
            if entry_point.dist is not None:
                self._distribution_of[entry_point.name] = entry_point.dist.name
            self._collect(entry_point.name, plugin)

    def _collect(self, plugin_name: str, plugin: Any) -> None:
        """Record the backends ``plugin`` declares; a plugin that declares none is warned about and dropped."""
        impls = self._hookimpls(plugin_name, plugin)
        try:
            declared = [declaration for impl in impls for declaration in cast(Iterable[Any], impl.function())]
        except Exception as exc:
            self._failed[plugin_name] = f"plugin {plugin_name!r} failed to declare its backends: {exc!r}"
            self._warn(self._failed[plugin_name])
            impls = []
        if not impls:
            self._manager.unregister(plugin)
            return
        for declaration in declared:
            self._add(plugin_name, declaration)
        self._rebuild_owners()

    def _hookimpls(self, plugin_name: str, plugin: Any) -> list[pluggy.HookImpl]:
        """The plugin's implementations of the hook; a PluginWarning if it has none or implements unknown hooks."""
        impls = [impl for impl in self._manager.hook.layernorm_backends.get_hookimpls() if impl.plugin is plugin]
        unknown = ", ".join(repr(hook) for hook in self._unknown_hooks(plugin))
        if not impls:
            self._warn(
                f"plugin {plugin_name!r} declares no backend: it has no function {_HOOK!r} marked "
                f"@layernorm_core.hookimpl" + (f" (it implements unknown hooks: {unknown})" if unknown else "")
            )
        elif unknown:
            self._warn(f"plugin {plugin_name!r} implements unknown hooks, which layernorm never calls: {unknown}")
        return impls

    def _add(self, plugin_name: str, declaration: Any) -> None:
        """Record one declaration of plugin ``plugin_name``; warn about one that is unusable or taken."""
        if not isinstance(declaration, BackendDeclaration):
            self._warn(f"plugin {plugin_name!r} declared {declaration!r}, which is not a BackendDeclaration")
        elif not isinstance(declaration.name, str) or declaration.name in _UNUSABLE_NAMES:
            self._warn(
                f"plugin {plugin_name!r} declares backend {declaration.name!r}, a name no call can select "
                "('auto' means dispatch by array type)"
            )
        elif (problem := _malformed(declaration)) is not None:
            self._warn(
                f"plugin {plugin_name!r} declares backend {declaration.name!r} with {problem}; it is not registered"
            )
        elif declaration.name in self._declarations:
            self._warn(
                f"plugin {plugin_name!r} declares backend {declaration.name!r}, already declared by plugin "
                f"{self._plugin_of[declaration.name]!r}; the first one is kept"
            )
        else:
            self._warn_taken_modules(plugin_name, declaration)
            self._declarations[declaration.name] = declaration
            self._plugin_of[declaration.name] = plugin_name

    def _warn_taken_modules(self, plugin_name: str, declaration: BackendDeclaration) -> None:
        for module in declaration.excluded_modules:
            if not _among_own_modules(module, declaration):
                self._warn(
                    f"plugin {plugin_name!r} declares backend {declaration.name!r} to exclude {module!r} arrays, "
                    f"outside its own array_modules {declaration.array_modules!r}; the exclusion is ignored"
                )
        for module in declaration.array_modules:
            owner = next((name for name, d in self._declarations.items() if module in d.array_modules), None)
            if owner is not None:
                self._warn(
                    f"plugin {plugin_name!r} declares backend {declaration.name!r} as the owner of {module!r} arrays, "
                    f"already owned by backend {owner!r} of plugin {self._plugin_of[owner]!r}; the first one keeps them"
                )

    def _unknown_hooks(self, plugin: Any) -> list[str]:
        """The hooks ``plugin`` implements that layernorm does not specify (a misspelled name, say).

        What pluggy's ``check_pending`` reports, for one plugin: it checks every plugin and stops at the first.
        """
        return sorted(
            caller.name
            for caller in self._manager.get_hookcallers(plugin) or ()
            if not caller.has_spec()
            and any(impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls())
        )

    def _rebuild_owners(self) -> None:
        """Recompute which backend owns which module; keep the per-type caches that are still right.

        The first declaration of a module keeps it, so a new plugin changes no owner found by a type's own module;
        only types cached as unowned, owned by a backend that is gone, or owned through a base class whose
        subclass's package a new plugin declares, are forgotten. Warm caches matter: the per-call path must not
        fall into the locked slow path while torch.compile traces it.
        """
        self._owner_by_module = {}
        self._excluded_by_module = {}
        for declaration in self._declarations.values():
            for module in declaration.array_modules:
                self._owner_by_module.setdefault(module, declaration.name)
            for module in declaration.excluded_modules:
                if _among_own_modules(module, declaration):
                    self._excluded_by_module.setdefault(module, declaration.name)
        self._owner_by_type = {
            cls: owner for cls, owner in self._owner_by_type.items() if owner and self._nearest_owner(cls) == owner
        }
        self._loaded_owner_by_type = {
            cls: owner for cls, owner in self._loaded_owner_by_type.items() if self._owner_by_type.get(cls) == owner
        }
        self.single_device_engines = {
            cls: engine for cls, engine in self.single_device_engines.items() if cls in self._loaded_owner_by_type
        }
        self.multi_device_engines = {
            cls: engine for cls, engine in self.multi_device_engines.items() if cls in self._loaded_owner_by_type
        }

    # -- lookups -----------------------------------------------------------------------------------------------

    def names(self) -> tuple[str, ...]:
        """Names of every declared backend, available or not, in registration order."""
        with self._lock:
            self._discover()
            return tuple(self._declarations)

    def declaration(self, name: str) -> BackendDeclaration:
        """The declaration of backend ``name``; BackendError if no plugin declares it."""
        with self._lock:  # another thread may be discovering: it holds the lock until every plugin is in
            self._discover()
            try:
                return self._declarations[name]
            except KeyError:
                known = ", ".join(self._declarations) or "none"
                failures = [self._failed[name]] if name in self._failed else list(self._failed.values())
                failed = f" ({'; '.join(failures)})" if failures else ""  # one of them may have declared it
                raise BackendError(f"unknown backend {name!r}{failed}; registered backends: {known}") from None

    def unavailable_reason(self, name: str) -> str | None:
        """Why backend ``name`` cannot run here (a missing module, with the pip extra of its plugin's distribution)."""
        declaration = self.declaration(name)
        with self._lock:
            distribution = self._distribution_of.get(self._plugin_of[name])
        for module in declaration.requires:
            if not _importable(module):
                if declaration.extra and distribution:
                    return f"{module} is not installed: pip install '{distribution}[{declaration.extra}]'"
                return f"{module} is not installed: install {module}"
        return None

    def get(self, name: str) -> ModuleType:
        """The loaded implementation of backend ``name``, importing it on first use.

        Raises:
            BackendError: ``name`` is not a string or no plugin declares it; the backend is not available (a module
                of its ``requires`` is missing: the message gives the pip extra); its implementation fails to import
                or lacks functions of the contract.

        """
        try:
            loaded = self._loaded.get(name)
        except TypeError:  # unhashable: a list
            loaded = None
        if loaded is not None:
            return loaded
        if not isinstance(name, str):
            raise BackendError(f"a backend name must be a string; got {type(name).__name__}")
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
            declaration = self.declaration(name)
            reason = self.unavailable_reason(name)
            if reason is not None:
                raise BackendError(f"backend {name!r} is not available: {reason}")
            try:
                module = importlib.import_module(declaration.implementation)
            except Exception as exc:
                raise BackendError(f"backend {name!r} failed to load {declaration.implementation}: {exc!r}") from exc
            missing = [f for f in REQUIRED_FUNCTIONS if not callable(getattr(module, f, None))]
            if missing:
                raise BackendError(f"backend {name!r} ({declaration.implementation}) lacks {', '.join(missing)}")
            self._loaded[name] = module
            return module

    def info(self, name: str) -> BackendInfo:
        """The `BackendInfo` of backend ``name``, loading it; BackendError if it fails to load or to answer."""
        module = self.get(name)
        implementation = self._declarations[name].implementation
        try:
            info = module.info()
        except Exception as exc:
            raise BackendError(f"backend {name!r} ({implementation}): info() raised {exc!r}") from exc
        if not isinstance(info, BackendInfo):
            raise BackendError(
                f"backend {name!r} ({implementation}): info() returned a {type(info).__name__}, not a BackendInfo"
            )
        return info

    # The lookups by type or name that follow never change their answer once given, but for plugins registered
    # or unregistered at run time (`_rebuild_owners`): code compiled before keeps the answer it traced with. dynamo
    # calls them eagerly while it traces (`constant_for_dynamo`), so traced code reads none of the caches behind
    # them: a trace that read a cache would be guarded on it, and an eager call that then added an entry (a new
    # array type, a backend loaded) would recompile every graph. They take locks and import, which dynamo cannot
    # trace either.

    @constant_for_dynamo
    def loaded_owner(self, array_type: type) -> str | None:
        """The name of the backend that owns ``array_type``, loaded, or None if no backend owns it.

        Cached by type, with the device count known; fills `single_device_engines` or `multi_device_engines`.
        """
        owner = self._loaded_owner_by_type.get(array_type)
        if owner is None:
            owner = self.owner_of_type(array_type)
            if owner is None:
                return None
            engine = self.get(owner)
            engines = self.multi_device_engines if self.multi_device(owner) else self.single_device_engines
            engines[array_type] = engine
            self._loaded_owner_by_type[array_type] = owner
        return owner

    @constant_for_dynamo
    def multi_device(self, name: str) -> bool:
        """Whether backend ``name`` reports more than one device here, so arrays of one call may disagree."""
        try:
            return self._multi_device[name]
        except KeyError:
            info = self.info(name)
            many = (len(info.devices) if info.device_count is None else info.device_count) > 1
            self._multi_device[name] = many
            return many

    def owner_of(self, x: Any) -> str | None:
        """The backend that owns x's array type (by ``type(x).__module__``), without importing anything."""
        return self.owner_of_type(type(x))

    @constant_for_dynamo
    def owner_of_type(self, array_type: type) -> str | None:
        """The backend that owns ``array_type`` (by the module of it or of a base class), importing nothing."""
        try:
            return self._owner_by_type[array_type]
        except KeyError:
            owner = self._owner_by_type[array_type] = self._find_owner(array_type)
            return owner

    def _find_owner(self, array_type: type) -> str | None:
        """The backend that owns ``array_type``, or None; entry points are read under the lock.

        That is the backend declared for the type's package or, failing that, for its nearest base class's (Keras
        3's TensorFlow variables subclass tf's Tensor). A type that is, or derives from, a type of a module a
        backend excludes (masked, sparse, ragged arrays) is a DTypeError.
        """
        with self._lock:
            self._discover()
            for cls in array_type.__mro__:
                self._reject_excluded(array_type, type_name(cls))
            return self._nearest_owner(array_type)

    def _nearest_owner(self, array_type: type) -> str | None:
        """The backend declared for the package of ``array_type`` or, failing that, of its nearest base class."""
        for cls in array_type.__mro__:
            owner = self._owner_by_module.get(cls.__module__.partition(".")[0])
            if owner is not None:
                return owner
        return None

    def _reject_excluded(self, array_type: type, class_name: str) -> None:
        """DTypeError if ``class_name`` (module.qualname) lies within a module or is a class that a backend excludes.

        Masked, sparse and ragged arrays, and shape specs (``jax.ShapeDtypeStruct``, whose module is ``jax``).
        """
        for excluded, name in self._excluded_by_module.items():
            if _within(class_name, excluded):
                raise not_dense_error(
                    type_name(array_type),
                    name,
                    excluded,
                    "a masked array's .filled(value), a sparse array's .todense(), or an array for a shape spec",
                )

    def status(self) -> list[BackendStatus]:
        """One `BackendStatus` per declared backend; loads each available backend to ask its devices."""
        rows = []
        for name in self.names():
            plugin = self._plugin_of[name]
            reason = self.unavailable_reason(name)
            info: BackendInfo | None = None
            if reason is None:
                try:
                    info = self.info(name)
                except BackendError as exc:
                    reason = str(exc)
            rows.append(
                BackendStatus(
                    name=name,
                    available=info is not None,
                    version=None if info is None else info.version,
                    devices=() if info is None else info.devices,
                    dtypes=() if info is None else info.dtypes,
                    reason=reason,
                    plugin=plugin,
                    description=self._declarations[name].description,
                )
            )
        return rows


def _malformed(declaration: BackendDeclaration) -> str | None:
    """What makes a declaration unusable as given (a string where a tuple of names belongs, say), or None."""
    for field_name in ("array_modules", "excluded_modules", "requires"):
        value = getattr(declaration, field_name)
        if not isinstance(value, tuple | list) or not all(isinstance(m, str) and m for m in value):
            return f"{field_name}={value!r}: it must be a tuple of module names, such as ('cupy',)"
    dotted = [m for m in declaration.array_modules if "." in m]
    if dotted:
        return f"array_modules={declaration.array_modules!r}: {dotted[0]!r} is not a top-level module name"
    if not isinstance(declaration.implementation, str) or not declaration.implementation:
        return f"implementation={declaration.implementation!r}: it must name a module"
    if declaration.extra is not None and not isinstance(declaration.extra, str):
        return f"extra={declaration.extra!r}: it must be a string or None"
    return None


def _within(module: str, package: str) -> bool:
    """Whether ``module`` is ``package`` or one of its submodules."""
    return module == package or module.startswith(package + ".")


def _among_own_modules(module: str, declaration: BackendDeclaration) -> bool:
    """Whether ``module`` lies within one of the declaration's array_modules: the only ones it may exclude."""
    return any(_within(module, own) for own in declaration.array_modules)


def _load_order(entry_points: Iterable[importlib.metadata.EntryPoint]) -> list[importlib.metadata.EntryPoint]:
    """The layernorm distribution's own entry points first, then the others by distribution and entry-point name.

    Independent of sys.path order, so which plugin keeps a clashing name (the first) is the same everywhere, and a
    third-party plugin never displaces a built-in one.
    """
    return sorted(
        entry_points, key=lambda ep: (_distribution(ep) != hookspecs.PROJECT_NAME, _distribution(ep), ep.name)
    )


def _distribution(entry_point: importlib.metadata.EntryPoint) -> str:
    """The normalized name of the distribution that declares ``entry_point`` ("" if unknown)."""
    dist = entry_point.dist
    return "" if dist is None else dist.name.lower().replace("_", "-")


def _origin(entry_point: importlib.metadata.EntryPoint) -> str:
    """Where an entry point comes from: ``module, from distribution version``."""
    dist = entry_point.dist
    return entry_point.value if dist is None else f"{entry_point.value}, from {dist.name} {dist.version}"


def _importable(module: str) -> bool:
    """Whether ``module`` can be imported, found without importing it (a missing parent package counts as no).

    A dotted name imports its parent packages: find_spec reads a submodule's location from its parent.
    """
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _issue_warning(message: str, stacklevel: int = 3) -> None:
    """Issue a PluginWarning now; the registry's code calls `Registry._warn`, which holds it during registration."""
    warnings.warn(f"layernorm: {message}", PluginWarning, stacklevel=stacklevel)


registry = Registry()
"""The process-wide registry the public API uses."""


def _unlock_in_child() -> None:
    """A new lock for a forked child, where the parent's thread that held it (loading a backend) does not run.

    A child forked while that thread registered the entry points has only some of them: it starts again. One
    forked while a backend's framework was being imported may still wait, in Python's import of that module, if
    it uses that backend too.
    """
    if registry._discovering:
        registry.__init__(entry_point_group=registry._group)  # type: ignore[misc]
    registry._lock = threading.RLock()
    registry._held = None  # a registration of that thread held its warnings: the child's must be issued


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_unlock_in_child)
