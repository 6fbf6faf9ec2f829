"""Load the reward rules (config/rewards/*.yaml) and the fixed FX table (config/rewards/_fx.yaml)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from config.loader import ConfigError, load_yaml_model
from tasks.domain.markets import Market
from tasks.domain.rewards import FxRates, RewardRule, check_rules

REWARDS_DIR = "rewards"
FX_FILE = "_fx.yaml"


@dataclass(frozen=True)
class RewardConfig:
    """Every reward rule, in file-name order, and the rates that turn their values into EUR."""

    rules: tuple[RewardRule, ...]
    fx: FxRates

    def rule(self, rule_id: str) -> RewardRule:
        """Return the rule called `rule_id`."""
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)


def _line(path: Path, keys: tuple[str, ...]) -> int | None:
    """Return the 1-based line of the deepest of `keys` found in the YAML file."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    line = None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        match = next((v for k, v in node.value if getattr(k, "value", None) == key), None)
        if match is None:
            break
        line, node = match.start_mark.line + 1, match
    return line


def load_fx(config_dir: Path) -> FxRates:
    """Return the fixed reporting rates (EUR per unit of each currency)."""
    return load_yaml_model(config_dir / REWARDS_DIR / FX_FILE, FxRates)


def load_reward_rules(config_dir: Path, markets: Mapping[str, Market] | None = None) -> RewardConfig:
    """Return every reward rule; with `markets`, also check each budget's market, currency and FX rate."""
    folder = config_dir / REWARDS_DIR
    fx = load_fx(config_dir)
    rules: list[RewardRule] = []
    paths: dict[str, Path] = {}
    for path in sorted(folder.glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        rule = load_yaml_model(path, RewardRule)
        if rule.id != path.stem:
            raise ConfigError(
                path, [f"line {_line(path, ('id',))}, id: {rule.id!r} does not match the file name"]
            )
        rules.append(rule)
        paths[rule.id] = path
    if markets is not None:
        currencies = {code: m.currency for code, m in markets.items()}
        for rule_id, problems in check_rules(rules, currencies, fx).items():
            path = paths[rule_id]
            shown = []
            for where, message in problems:
                line = _line(path, where)
                shown.append(f"{f'line {line}, ' if line else ''}{'.'.join(where)}: {message}")
            raise ConfigError(path, shown)
    return RewardConfig(tuple(rules), fx)
