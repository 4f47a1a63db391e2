"""Where `harness doctor` attaches to Keras: `Model.fit` and `Model.compile`, ImageDataGenerator's
constructor, `fit` and `flow*` (Keras' legacy class, which `tensorflow.keras.preprocessing.image`
serves, and tf-keras'), and `Normalization.adapt`. Each patch calls the original unchanged and hands
what it saw to the active session; a patch whose session is gone passes straight through.

Keras is patched when the script imports it, not before: a script may choose its backend
(`os.environ["KERAS_BACKEND"] = "jax"`) before its first `import keras`, and importing Keras here
first would decide for it. So the patches wait behind an import hook (a `sys.meta_path` finder that
runs them right after the module's own code); modules already imported are patched at once.
"""
from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import inspect
import sys

ACTIVE: list = [None]           # the session the patches report to (one per process)

# Module -> the function that patches it once it has run.
GENERATOR_MODULES = ("keras.src.legacy.preprocessing.image", "tf_keras.src.preprocessing.image")


def active():
    return ACTIVE[0]


def report(method: str, *args) -> None:
    """Hand what a patch saw to the session; a recording that fails never reaches the user's code."""
    session = active()
    if session is not None:
        session.guard(method, *args)


def patch(owner, name: str, make) -> None:
    """owner.name = make(original), once (a patched function knows its original); `original` may be
    inherited: uninstall then removes the patch instead of restoring anything on `owner`."""
    original = getattr(owner, name, None)
    if original is None or getattr(original, "__doctor_original__", None) is not None:
        return
    patched = make(original)
    functools.update_wrapper(patched, original)
    patched.__doctor_original__ = original
    PATCHED.append((owner, name, owner.__dict__.get(name)))
    setattr(owner, name, patched)


PATCHED: list = []          # (owner, name, what owner itself had under that name, or None)


def patch_keras(keras) -> None:
    """Model.fit (from the backend's trainer class) and Model.compile, set on keras.Model: they serve
    every model (Functional, Sequential, subclasses) that does not define its own."""
    def make_fit(original):
        def fit(self, *args, **kwargs):
            session = active()
            if session is None:
                return original(self, *args, **kwargs)
            return session.on_fit(original, self, args, kwargs)
        return fit

    def make_compile(original):
        def compile(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            report("on_compile", self)
            return result
        return compile

    def make_adapt(original):
        def adapt(self, data, *args, **kwargs):
            result = original(self, data, *args, **kwargs)
            report("on_adapt", self, data)
            return result
        return adapt

    patch(keras.Model, "fit", make_fit)
    patch(keras.Model, "compile", make_compile)
    patch(keras.layers.Normalization, "adapt", make_adapt)
    for name in GENERATOR_MODULES:
        if name in sys.modules:
            patch_generators(sys.modules[name])


def patch_generators(module) -> None:
    """ImageDataGenerator's constructor, fit and flow* record the object, the line and the data."""
    cls = getattr(module, "ImageDataGenerator", None)
    if cls is None:
        return
    signature = inspect.signature(cls.__init__)

    def make_init(original):
        def __init__(self, *args, **kwargs):
            original(self, *args, **kwargs)
            try:
                settings = dict(signature.bind(self, *args, **kwargs).arguments)
            except TypeError:
                settings = dict(kwargs)
            settings.pop("self", None)
            settings.update(settings.pop("kwargs", {}))
            report("on_generator_made", self, settings)
        return __init__

    def make_fit(original):
        def fit(self, x, *args, **kwargs):
            result = original(self, x, *args, **kwargs)
            report("on_generator_fit", self, x)
            return result
        return fit

    def make_flow(original):
        def flow(self, *args, **kwargs):
            iterator = original(self, *args, **kwargs)
            report("on_generator_flow", self, args[0] if args else kwargs.get("x"), iterator)
            return iterator
        return flow

    patch(cls, "__init__", make_init)
    patch(cls, "fit", make_fit)
    for name in ("flow", "flow_from_directory", "flow_from_dataframe"):
        patch(cls, name, make_flow)


def nothing_more(module) -> None:
    return None


ACTIONS = {"keras": patch_keras, "tensorflow": nothing_more, **{name: patch_generators for name in GENERATOR_MODULES}}
# Modules whose import prints native start-up lines on fd 2 (TensorFlow's absl and CUDA-stub lines),
# held as `harness sweep` holds them: they are not the script's output.
QUIET = ("tensorflow",)


class AfterImport(importlib.abc.MetaPathFinder):
    """Runs ACTIONS[name](module) right after a watched module's own code has run."""

    def __init__(self):
        self.busy: set[str] = set()

    def find_spec(self, name, path=None, target=None):
        if name not in ACTIONS or name in self.busy:
            return None
        self.busy.add(name)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.busy.discard(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = ThenPatch(spec.loader, ACTIONS[name], quiet=name in QUIET)
        return spec


class ThenPatch(importlib.abc.Loader):
    def __init__(self, loader, action, quiet: bool = False):
        self.loader, self.action, self.quiet = loader, action, quiet

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        if self.quiet:
            from harness.backend import quiet_native_stderr
            with quiet_native_stderr():
                self.loader.exec_module(module)
        else:
            self.loader.exec_module(module)
        try:
            self.action(module)
        except Exception as e:  # noqa: BLE001 - a patch that fails leaves the script as it is
            report("on_patch_failed", module.__name__, e)


FINDER = AfterImport()


def install(session) -> None:
    """Patch what is imported, and what will be, for `session`."""
    ACTIVE[0] = session
    if FINDER not in sys.meta_path:
        sys.meta_path.insert(0, FINDER)
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "Model"):
        patch_keras(keras)
    for name in GENERATOR_MODULES:
        if name in sys.modules:
            patch_generators(sys.modules[name])


def uninstall() -> None:
    """Every patch undone, the import hook removed, no session active."""
    ACTIVE[0] = None
    if FINDER in sys.meta_path:
        sys.meta_path.remove(FINDER)
    while PATCHED:
        owner, name, own = PATCHED.pop()
        if own is None:
            delattr(owner, name)
        else:
            setattr(owner, name, own)
