"""Load and validate the YAML configuration; every mistake names the file, line and field."""

from __future__ import annotations

import difflib
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import TypeAdapter, ValidationError

from tasks.domain.markets import Market
from tasks.domain.playbook import CycleConfig, Playbook
from tasks.domain.rules import RetentionPolicy
from tasks.domain.segmentation import SegmentationConfig
from tasks.domain.worklist import WorklistConfig

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or invalid."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


def _node_line(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """Return the 1-based line of the YAML node at `loc`, or of its closest existing parent."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if match is None:
                break
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        line = node.start_mark.line + 1
    return line


def _dataclass_in(annotation: Any) -> Any:
    """Return the dataclass inside an annotation such as tuple[Step, ...] or Step | None."""
    if is_dataclass(annotation) and isinstance(annotation, type):
        return annotation
    for arg in typing.get_args(annotation):
        found = _dataclass_in(arg)
        if found is not None:
            return found
    return None


def _field_names(model: Any, loc: tuple[int | str, ...]) -> list[str]:
    """Return the field names allowed at `loc` (for 'did you mean' hints)."""
    current = model
    for part in loc:
        if isinstance(part, int):
            continue
        hints = typing.get_type_hints(current) if current is not None else {}
        current = _dataclass_in(hints.get(str(part)))
        if current is None:
            return []
    return [f.name for f in fields(current)] if current is not None else []


def _describe(error: dict[str, Any], root: yaml.Node | None, model: Any) -> str:
    loc = tuple(error["loc"])
    path = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
    line = _node_line(root, loc)
    where = f"line {line}, " if line else ""
    message = error["msg"]
    if error["type"] in {"unexpected_keyword_argument", "extra_forbidden"} and loc:
        allowed = _field_names(model, loc[:-1])
        guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        message = f"unknown field {loc[-1]!r}" + (f" (did you mean {guess[0]!r}?)" if guess else "")
        if allowed:
            message += f"; allowed: {', '.join(allowed)}"
    elif error["type"] in {"missing_keyword_argument", "missing"}:
        message = "required field is missing"
    return f"{where}{path or '(top level)'}: {message}"


def load_yaml_model(path: Path, model: type[T]) -> T:
    """Parse `path` and validate it as `model`, raising ConfigError with line and field on failure."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [f"cannot read file: {exc.strerror or exc}"]) from exc
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(path, [f"not valid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise ConfigError(path, ["expected a mapping at the top level"])
    try:
        return TypeAdapter(model).validate_python(data)
    except ValidationError as exc:
        problems = [_describe(dict(e), root, model) for e in exc.errors()]
        raise ConfigError(path, problems) from None


def load_markets(config_dir: Path) -> dict[str, Market]:
    """Return every market under `config_dir/markets`, keyed by code."""
    markets: dict[str, Market] = {}
    for path in sorted((config_dir / "markets").glob("*.yaml")):
        market = load_yaml_model(path, Market)
        if market.code != path.stem:
            raise ConfigError(path, [f"code {market.code!r} does not match the file name {path.stem!r}"])
        markets[market.code] = market
    if not markets:
        raise ConfigError(config_dir / "markets", ["no market files found"])
    return markets


def load_playbooks(config_dir: Path) -> dict[str, Playbook]:
    """Return every playbook under `config_dir/playbooks`, keyed by id."""
    books: dict[str, Playbook] = {}
    for path in sorted((config_dir / "playbooks").glob("*.yaml")):
        book = load_yaml_model(path, Playbook)
        if book.id != path.stem:
            raise ConfigError(path, [f"id {book.id!r} does not match the file name {path.stem!r}"])
        books[book.id] = book
    return books


def load_playbook(config_dir: Path, playbook_id: str) -> Playbook:
    """Return the playbook `playbook_id`, or a ConfigError listing the ones that exist."""
    path = config_dir / "playbooks" / f"{playbook_id}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (config_dir / "playbooks").glob("*.yaml"))
        raise ConfigError(path, [f"no playbook {playbook_id!r}; known: {', '.join(known) or 'none'}"])
    book = load_yaml_model(path, Playbook)
    if book.id != playbook_id:
        raise ConfigError(path, [f"id {book.id!r} does not match the file name {playbook_id!r}"])
    return book


def load_segmentation(config_dir: Path) -> SegmentationConfig:
    """Return the segmentation thresholds and scorecard."""
    return load_yaml_model(config_dir / "segments.yaml", SegmentationConfig)


def load_retention(config_dir: Path) -> RetentionPolicy:
    """Return the retention periods per data category."""
    return load_yaml_model(config_dir / "retention.yaml", RetentionPolicy)


def load_cycle(config_dir: Path) -> CycleConfig:
    """Return the default playbooks of a cycle, in priority order, each checked to exist."""
    path = config_dir / "cycle.yaml"
    cycle = load_yaml_model(path, CycleConfig)
    missing = [p for p in cycle.playbooks if not (config_dir / "playbooks" / f"{p}.yaml").exists()]
    if missing:
        raise ConfigError(path, [f"no playbook file for {', '.join(missing)}"])
    return cycle


def load_worklist(config_dir: Path) -> WorklistConfig:
    """Return the worklist's owners per market and its high-value threshold."""
    return load_yaml_model(config_dir / "worklist.yaml", WorklistConfig)
