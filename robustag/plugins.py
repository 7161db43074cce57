"""Plugins by name: declared, typed parameters, spec strings, and three ways to load them.

A plugin is a class with a `name`, a one-line `summary` and a `params` dict of `Param`s.
It is found by name in a `Registry`, which holds

- the built-ins: every module of the built-in package (`robustag.attacks`, one file each),
- installed third-party plugins: the entry-point group (`robustag.attacks`),
- local files: `--plugin path/to/file.py`.

A plugin is built from a spec string, `name` or `name:key=value,key=value`; values are
coerced to the declared types and checked, and every error names the plugin.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import pkgutil
import re
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, ClassVar

from robustag.errors import ParameterError, RobustagError


class PluginError(RobustagError):
    """A plugin that cannot be found, loaded or configured."""


class PluginFileError(ParameterError, PluginError):
    """A plugin file that cannot be loaded."""


@dataclass(frozen=True)
class Param:
    """A declared plugin parameter: default, type, help, and the values it accepts."""

    default: Any
    help: str = ""
    choices: tuple | None = None
    check: Callable[[Any], bool] | None = None
    requirement: str = ""  # says what `check` demands, for the error message
    kind: type | None = None  # the type, where the default (None: "decided later") does not tell it

    @property
    def type(self) -> type:
        return self.kind or type(self.default)

    def coerce(self, plugin: str, key: str, value: Any) -> Any:
        kind = self.type
        if self.default is None and (value is None or value == "None"):  # unset, also as its spec writes it
            return None
        try:
            if kind is bool and isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                value = value.lower() in ("true", "1", "yes")
            elif kind is float and isinstance(value, (str, int)) and not isinstance(value, bool):
                value = float(value)
            elif kind is int and isinstance(value, str):
                value = int(value)
            elif not isinstance(value, kind):
                raise ValueError(value)
        except ValueError:
            raise PluginError(f"{plugin}: parameter {key}={value!r} is not a valid {kind.__name__}") from None
        if kind is float and not math.isfinite(value):  # inf and NaN pass float() but no check
            raise PluginError(f"{plugin}: parameter {key}={value!r} must be a finite number")
        if self.choices is not None and value not in self.choices:
            raise PluginError(f"{plugin}: parameter {key}={value!r} must be one of {', '.join(map(str, self.choices))}")
        if self.check is not None and not self.check(value):
            raise PluginError(f"{plugin}: parameter {key}={value!r} must be {self.requirement}")
        return value


def positive(requirement: str = "> 0") -> dict:
    return {"check": lambda v: v > 0, "requirement": requirement}


def non_negative() -> dict:
    return {"check": lambda v: v >= 0, "requirement": "≥ 0"}


def fraction() -> dict:
    return {"check": lambda v: 0 <= v <= 1, "requirement": "in [0, 1]"}


class Plugin:
    """Base of attacks and defenses: a name, a summary and declared parameters."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}

    def __init__(self, **values: Any):
        unknown = sorted(set(values) - set(self.params))
        if unknown:
            known = ", ".join(self.params) or "none"
            raise PluginError(f"{self.name}: unknown parameter {unknown[0]!r} (known: {known})")
        self.config = {
            key: param.coerce(self.name, key, values[key]) if key in values else param.default
            for key, param in self.params.items()
        }
        for key, value in self.config.items():
            setattr(self, key, value)
        self.validate()

    def validate(self) -> None:
        """Checks that involve several parameters; raise PluginError naming the plugin."""

    @property
    def spec(self) -> str:
        """The canonical spec string: every parameter, defaults included."""
        if not self.config:
            return self.name
        return f"{self.name}:" + ",".join(f"{k}={v}" for k, v in self.config.items())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec}>"


NAME_PATTERN = r"[A-Za-z0-9_.\-]+"  # what a spec can name: no ':', ',', '=', brackets or spaces
_SPEC = re.compile(rf"^(?P<name>{NAME_PATTERN})(?::(?P<params>.*))?$")


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`pgd:eps=0.5,steps=10` -> ("pgd", {"eps": "0.5", "steps": "10"})."""
    match = _SPEC.match(spec.strip())
    if not match:
        raise PluginError(f"malformed spec {spec!r}: expected NAME or NAME:key=value,key=value")
    values: dict[str, str] = {}
    for item in _split_top_level(match["params"] or ""):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PluginError(f"{match['name']}: malformed parameter {item!r} in {spec!r}: expected key=value")
        if key.strip() in values:
            raise PluginError(f"{match['name']}: parameter {key.strip()!r} given twice in {spec!r}")
        values[key.strip()] = value.strip()
    return match["name"], values


def spec_values(spec: str) -> dict[str, Any]:
    """A spec's parameters as JSON would hold them (numbers, booleans, strings): what stores
    and reports keep, parsed once (`aml:attack=pgd,eps=0.1` -> {"attack": "pgd", "eps": 0.1})."""
    def typed(text: str):
        if text in ("True", "False"):
            return text == "True"
        try:
            return json.loads(text)
        except ValueError:
            return text
    return {key: typed(text) for key, text in parse_spec(spec)[1].items()}


def split_specs(text: str) -> list[str]:
    """Split a comma-separated list of specs: a part with '=' continues the spec before it,
    so `pgd:eps=0.5,steps=10,mim` is ["pgd:eps=0.5,steps=10", "mim"]."""
    specs: list[str] = []
    for part in _split_top_level(text):
        if "=" in part and ":" not in part.split("=", 1)[0] and specs:
            specs[-1] += "," + part
        elif part:
            specs.append(part)
    return specs


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, so sweep lists like `eps=[0.1,0.5]` stay whole."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current.strip())
    return parts


class Registry:
    """Plugins of one kind (attacks or defenses) by name."""

    def __init__(self, kind: str, base: type, builtin_package: str, entry_point_group: str):
        self.kind, self.base = kind, base
        self.builtin_package, self.entry_point_group = builtin_package, entry_point_group
        self._classes: dict[str, type] = {}
        self._origins: dict[str, str] = {}
        self._aliases: dict[str, str] = {}
        self._loaded = False
        self._files: dict[str, list[str]] = {}
        self._versions: dict[str, str] = {}  # plugin name -> "distribution==version" (entry points)

    # -- registration -------------------------------------------------------------------
    def register(self, cls: type, origin: str) -> type:
        if not (inspect.isclass(cls) and issubclass(cls, self.base)) or not cls.name:
            raise PluginError(f"{origin}: {cls!r} is not a named {self.base.__name__} subclass")
        name = cls.name
        if not re.fullmatch(NAME_PATTERN, name):
            raise PluginError(f"{origin}: {self.kind} name {name!r} cannot be written in a spec; "
                              "use letters, digits, '_', '.' and '-' only")
        if name in self._aliases or (name in self._classes and self._classes[name] is not cls):
            first = self._origins.get(name, "a built-in alias")
            raise PluginError(f"{self.kind} name clash: {name!r} from {origin} is already provided by {first}")
        self._classes[name], self._origins[name] = cls, origin
        return cls

    def alias(self, name: str, spec: str) -> None:
        """A preset: `name` stands for a full spec string (e.g. tag-replace-20)."""
        self._aliases[name] = spec

    def register_module(self, module, origin: str) -> list[str]:
        """Register every plugin class defined in `module`; returns their names."""
        found = [
            obj for obj in vars(module).values()
            if inspect.isclass(obj) and issubclass(obj, self.base) and obj.__module__ == module.__name__ and obj.name
        ]
        for cls in found:
            self.register(cls, origin)
        for name, spec in getattr(module, "PRESETS", {}).items():
            self.alias(name, spec)
        return [cls.name for cls in found]

    def load_file(self, path: str | Path) -> list[str]:
        """Register the plugins of this kind in a local Python file (`--plugin path.py`)."""
        self._ensure_builtins()
        module = import_plugin_file(Path(path))
        if module.__name__ in self._files:
            return self._files[module.__name__]
        self._files[module.__name__] = self.register_module(module, f"file {path}")
        return self._files[module.__name__]

    def _ensure_builtins(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self.builtin_package)
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{self.builtin_package}.{info.name}")
            self.register_module(module, f"built-in {self.builtin_package}.{info.name}")
        for ep in entry_points(group=self.entry_point_group):
            self._load_entry_point(ep)

    def _load_entry_point(self, ep) -> None:
        origin = f"entry point {ep.name!r} ({ep.value}) of group {self.entry_point_group}"
        try:
            obj = ep.load()
        except Exception as error:
            raise PluginError(f"{self.kind} plugin {origin} failed to import: {type(error).__name__}: {error}") from error
        names = self.register_module(obj, origin) if inspect.ismodule(obj) else [self.register(obj, origin).name]
        if ep.dist is not None:
            self._versions.update({name: f"{ep.dist.name}=={ep.dist.version}" for name in names})

    # -- lookup ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._ensure_builtins()
        return sorted(self._classes)

    def presets(self) -> dict[str, str]:
        self._ensure_builtins()
        return dict(self._aliases)

    def declared(self, name: str, attribute: str, unknown: Any = None) -> Any:
        """What plugin `name` declares (a class attribute); `unknown` when no plugin of that
        name is loaded here (a report read without the plugin file) or it declares no such thing."""
        try:
            return getattr(self.get(name), attribute, unknown)
        except PluginError:
            return unknown

    def origin(self, name: str) -> str:
        return self._origins[name]

    def code(self, spec: str) -> str | None:
        """What identifies the code of the plugin a spec names, for the keys of what it
        computes: None for a built-in (robustag's own code, versioned with it), else a hash of the
        source file that defines it (a `--plugin` file, or an installed package's module) with
        the installed distribution's version where there is one; a change of a plugin's code
        changes the keys of its results, so they are recomputed, never served stale."""
        cls = self.resolve(spec)[0]
        origin = self._origins[cls.name]
        if origin.startswith("built-in "):
            return None
        try:
            source = hashlib.sha256(Path(inspect.getfile(cls)).read_bytes()).hexdigest()[:16]
        except (OSError, TypeError):  # defined where no file is (an interactive session): its name alone
            source = f"{cls.__module__}.{cls.__qualname__}"
        return f"{source} {self._versions.get(cls.name, '')}".strip()

    def get(self, name: str) -> type:
        self._ensure_builtins()
        if name not in self._classes:
            available = ", ".join(sorted([*self._classes, *self._aliases]))
            raise PluginError(f"unknown {self.kind} {name!r}; available: {available}")
        return self._classes[name]

    def resolve(self, spec: str) -> tuple[type, dict[str, str]]:
        """The class a spec names (presets expanded) and the spec's raw parameter values."""
        self._ensure_builtins()
        name, values = parse_spec(spec)
        if name in self._aliases:
            name, preset = parse_spec(self._aliases[name])
            values = {**preset, **values}
        return self.get(name), values

    def create(self, spec: str, **overrides: Any):
        """Build a plugin from a spec string; `overrides` win over the spec's values."""
        cls, values = self.resolve(spec)
        return cls(**{**values, **overrides})


_IMPORTED_FILES: dict[Path, object] = {}


def import_plugin_file(path: Path):
    """Import a plugin file once per process, whatever registries then read it."""
    resolved = path.resolve()
    if resolved in _IMPORTED_FILES:
        return _IMPORTED_FILES[resolved]
    if path.is_dir():
        raise PluginFileError("plugins", "is a folder; expected a Python file defining plugins", path)
    if not path.is_file():
        raise PluginFileError("plugins", "file not found", path)
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"robustag_plugin_{stem}_{len(_IMPORTED_FILES)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # a plugin may fail in any way: name it, keep the cause
        del sys.modules[module_name]
        raise PluginFileError("plugins", f"failed to import: {type(error).__name__}: {error}", path) from error
    _IMPORTED_FILES[resolved] = module
    return module
