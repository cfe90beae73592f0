"""Results trees -> tables and plots, from summary.json and metrics.csv, never by re-training."""
