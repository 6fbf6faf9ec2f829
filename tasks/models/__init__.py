"""Risk models that learn from history: training, calibration, explanations and the scorecard comparison."""
