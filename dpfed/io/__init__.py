"""Run outputs: metrics.csv (one row per round) and summary.json."""
