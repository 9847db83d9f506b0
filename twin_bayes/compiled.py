"""JAX's compiled code across and within processes: the persistent compilation cache, phases kept as
`jax.export` artifacts (`Phase`), and a bound on the compiled executables a process keeps mapped."""
from __future__ import annotations

import functools
import gc
import hashlib
import importlib
import json
import os
import threading
import warnings
from pathlib import Path

import jax


def enable_cache() -> None:
    """Keep every compiled executable under $JAX_COMPILATION_CACHE_DIR (default ~/.cache/twin-bayes/jax).

    Sub-second compiles too: a process compiles hundreds of small programs besides its phases (an SVI
    test alone caches 273), each pytest worker and subprocess compiled them again, and a process
    that drops its executables (`release_compiled_code`) recompiled them. Cached, the default test
    suite on 2 cores took 1277-1482 s with the short walking study added, 1503 s without it before
    (docs/TESTING.md)."""
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "twin-bayes" / "jax"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def mapped_regions() -> tuple[int, int]:
    """(memory mappings of this process, the kernel's limit on them); (0, 1) off Linux."""
    try:
        with open("/proc/self/maps") as maps, open("/proc/sys/vm/max_map_count") as limit:
            return sum(1 for _ in maps), int(limit.read())
    except OSError:
        return 0, 1


def release_compiled_code(fraction: float = 0.5) -> bool:
    """Drop the in-memory compiled executables once `fraction` of the mapping limit is used; True if so.

    XLA:CPU maps each compiled kernel into memory regions of its own. A process that compiles tens of
    thousands of kernels (the test suite, a humanoid experiment) passes Linux's limit on mappings per
    process (`vm.max_map_count`, 65,530 by default), where loading the next executable fails inside
    XLA. Dropped executables are loaded again from the persistent cache when next called.
    """
    used, limit = mapped_regions()
    if used <= fraction * limit:
        return False
    jax.clear_caches()
    gc.collect()
    return True


# --- compiled phases kept across processes ----------------------------------------------------
class Phase:
    """`fn(model, *args)` jitted once per design, static arguments and input shapes, and kept across
    processes as a `jax.export` artifact next to the compilation cache.

    The persistent compilation cache alone spares XLA's compile but not the tracing that computes its
    key, and tracing the MJX simulator inside an update takes a fresh process tens of seconds. An
    artifact holds the traced, lowered module: a later process of the same twin-bayes, library
    versions and machine deserialises it and only compiles (a cache hit), in seconds. Without a
    compilation cache directory, phases are plain `jax.jit`.

    The model enters as its leaves (traced numbers); its static design is part of the key, by value
    (`Robot.fingerprint` for the robot). `static_argnums` index `args` as `jax.jit`'s would (the model
    is 0). `_cache_size()` counts the executables this process holds, as `jax.jit`'s does.
    """

    def __init__(self, fn, static_argnums: tuple[int, ...] = ()):
        self.fn, self.static_argnums = fn, tuple(static_argnums)
        self.__name__, self.__doc__ = fn.__name__, fn.__doc__
        self._calls: dict = {}
        self._compiling = threading.Lock()   # threads asking for one executable compile it once

    def __call__(self, model, *args):
        static = tuple((i, args[i - 1]) for i in self.static_argnums)
        dynamic = [a for i, a in enumerate(args, 1) if i not in self.static_argnums]
        numbers, model_tree = jax.tree.flatten(model)
        leaves, tree = jax.tree.flatten((numbers, dynamic))
        signature = (model_tree, static, tree, tuple(jax.typeof(x) for x in leaves))
        call = self._calls.get(signature)
        if call is None:
            with self._compiling:
                call = self._calls.get(signature)
                if call is None:
                    call = self._calls[signature] = self._compile(model_tree, static, numbers, dynamic, signature)
        # committed to the default device: an exported phase returns committed arrays, and an input of
        # the other kind would compile the phase a second time (`jax.jit` keys on it)
        return call(*jax.device_put((numbers, dynamic), jax.devices()[0]))

    def _cache_size(self) -> int:
        return len(self._calls)

    def _compile(self, model_tree, static, numbers, dynamic, signature):
        def traced(numbers, dynamic):
            args, rest = [], iter(dynamic)
            fixed = dict(static)
            for i in range(1, len(dynamic) + len(fixed) + 1):
                args.append(fixed[i] if i in fixed else next(rest))
            return self.fn(jax.tree.unflatten(model_tree, numbers), *args)

        directory = exported_dir()
        if directory is None:
            return jax.jit(traced)
        key = hashlib.sha256(repr((self.fn.__module__, self.fn.__qualname__, signature, environment())).encode())
        path = directory / f"{self.fn.__module__}.{self.fn.__qualname__}-{key.hexdigest()[:32]}.jaxexport"
        exported = _read_exported(path)
        if exported is None:
            exported = jax.export.export(jax.jit(traced))(numbers, dynamic)
            _write_exported(path, exported)
        return jax.jit(exported.call)


def phase(fn=None, *, static_argnums: tuple[int, ...] = ()):
    """Decorator: `fn(model, *args)` as a `Phase`."""
    if fn is None:
        return lambda f: Phase(f, static_argnums)
    return Phase(fn, static_argnums)


def exported_dir() -> Path | None:
    """Where phases keep their artifacts: `exported/` in the compilation cache directory (None: no cache)."""
    cache = jax.config.jax_compilation_cache_dir
    return Path(cache) / "exported" if cache else None


@functools.cache
def environment() -> tuple:
    """What a phase's artifact depends on besides its inputs: library versions, the twin-bayes source,
    x64, the backend and XLA flags."""
    from importlib.metadata import PackageNotFoundError, version
    versions = []
    for name in ("jax", "jaxlib", "mujoco", "mujoco-mjx", "brax", "numpyro", "blackjax"):
        try:
            versions.append((name, version(name)))
        except PackageNotFoundError:
            versions.append((name, None))
    source = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        source.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return (tuple(versions), source.hexdigest(), bool(jax.config.jax_enable_x64), jax.default_backend(),
            jax.devices()[0].device_kind, os.environ.get("XLA_FLAGS", ""))


_SERIALIZABLE: set[type] = set()


def _namedtuples(tree) -> list[type]:
    """The NamedTuple classes among a treedef's nodes."""
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        data = node.node_data()
        if data is not None and issubclass(data[0], tuple) and hasattr(data[0], "_fields"):
            found.append(data[0])
        stack.extend(node.children())
    return found


def _serializable(classes) -> None:
    for cls in classes:
        if cls not in _SERIALIZABLE:
            jax.export.register_namedtuple_serialization(cls, serialized_name=f"{cls.__module__}.{cls.__qualname__}")
            _SERIALIZABLE.add(cls)


def _write_exported(path: Path, exported) -> None:
    """Write the artifact atomically: a JSON header naming its NamedTuple classes, then the module.
    A directory that cannot be written to only costs the next process its tracing."""
    classes = _namedtuples(exported.in_tree) + _namedtuples(exported.out_tree)
    _serializable(classes)
    header = json.dumps(sorted({f"{c.__module__}:{c.__qualname__}" for c in classes})).encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(len(header).to_bytes(4, "little") + header + bytes(exported.serialize()))
        os.replace(tmp, path)
    except OSError as err:
        warnings.warn(f"compiled phase not kept ({path.parent}: {err})", stacklevel=3)


def _read_exported(path: Path):
    """The artifact at path, or None where there is none or it cannot be read (then it is rebuilt)."""
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    try:
        n = int.from_bytes(blob[:4], "little")
        classes = []
        for name in json.loads(blob[4:4 + n]):
            module, qualname = name.split(":")
            obj = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            classes.append(obj)
        _serializable(classes)
        return jax.export.deserialize(bytearray(blob[4 + n:]))
    except Exception as err:  # a truncated or foreign file: say so and rebuild it
        warnings.warn(f"compiled phase {path.name} unreadable ({type(err).__name__}: {err}); rebuilding",
                      stacklevel=3)
        return None
