"""Research over many runs: sweep specs, trial plans, walk-forward windows, overfitting
statistics and the sweep's results table and report. Plain deterministic Python, no Ray."""
