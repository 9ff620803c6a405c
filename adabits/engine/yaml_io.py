"""YAML reading with the original's `!include` tag, remembering which file set each top-level key."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError


class Included(dict):
    """A mapping read through `!include`; its keys are merged under the including file's keys."""

    def __init__(self, data: dict[str, Any], origins: dict[str, str]) -> None:
        super().__init__(data)
        self.origins = origins


def _loader_for(path: Path, stack: tuple[Path, ...]) -> type[yaml.SafeLoader]:
    """A SafeLoader subclass whose `!include` resolves relative to `path` (and refuses cycles)."""

    class Loader(yaml.SafeLoader):
        pass

    def include(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        target = (path.parent / loader.construct_scalar(node)).resolve()
        if target in stack:
            raise ConfigError(f"{path}: !include cycle through {target}")
        if target.suffix in (".yml", ".yaml"):
            data, origins = read_yaml(target, stack)
            return Included(data, origins)
        try:
            return target.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot !include {target}: {exc.strerror}") from None

    Loader.add_constructor("!include", include)
    return Loader


def _flatten(data: dict[str, Any], origin: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge included mappings (top-level keys whose value came from `!include`) under this file's keys."""
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for value in data.values():
        if isinstance(value, Included):
            for k, v in value.items():
                if k not in data:
                    merged[k], origins[k] = v, value.origins.get(k, origin)
    for key, value in data.items():
        if not isinstance(value, Included):
            merged[key], origins[key] = value, origin
    return merged, origins


def _one_line(error: yaml.YAMLError) -> str:
    """A YAML error's problem and where, on one line (PyYAML's message spans several with a caret drawing)."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(error).split())


def read_yaml(path: Path, stack: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """The flat mapping of a config file and, for each key, the file it came from."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}); "
                          "a config is a YAML text file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_loader_for(path, stack + (path.resolve(),)))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {_one_line(exc)}") from None
    if data is None:
        data = {}
    if isinstance(data, Included):
        return dict(data), dict(data.origins)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, found {type(data).__name__}")
    return _flatten(data, str(path))
