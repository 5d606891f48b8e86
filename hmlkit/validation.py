"""Turn YAML files into pydantic models with errors a user can act on.

Shared by the job file and the environment profile so both read the same way:
``job.yaml: resources.gpus: Input should be greater than or equal to 0``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from hmlkit.errors import InvalidInput, SpecError

M = TypeVar("M", bound=BaseModel)


def error_items(exc: ValidationError) -> list[tuple[str, str]]:
    """(dotted field path, message) for each pydantic error, phrased for people.

    The one formatter for job files, profiles and component args alike.
    """
    items = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        elif err["type"] == "missing":
            msg = "required field is missing"
        items.append((path, msg))
    return items


def format_errors(exc: ValidationError) -> list[str]:
    return [f"{path or '(top level)'}: {msg}" for path, msg in error_items(exc)]


def _loader() -> Any:
    """A safe YAML loader that refuses duplicate keys (plain YAML keeps the last, silently)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.setdefault(key, line)
                except TypeError:  # an unhashable key: the constructor reports it
                    continue
                if first != line:
                    raise yaml.MarkedYAMLError(
                        problem=f"duplicate key {key!r} (lines {first} and {line}); keep one",
                        problem_mark=key_node.start_mark,
                    )
            return super().construct_mapping(node, deep=deep)

    return Loader


def read_yaml(path: Path, error: type[InvalidInput] = SpecError) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(str(path), ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(str(path), [f"cannot read file: {exc}"]) from None
    return parse_yaml(text, str(path), error)


def parse_yaml(text: str, source: str, error: type[InvalidInput] = SpecError) -> Any:
    """YAML already read (e.g. from a descriptor whose owner was checked), ``source`` naming it."""
    import yaml

    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if problem.startswith("duplicate key"):
            where = ""
        raise error(source, [f"{where}not valid YAML: {problem}"]) from None


def validate(model: type[M], data: Any, source: str, error: type[InvalidInput] = SpecError) -> M:
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise error(source, [f"(top level): expected a mapping of fields, got {kind}"])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(source, format_errors(exc)) from None
