"""Settings and validated YAML configuration (markets, playbooks, scorecard)."""
