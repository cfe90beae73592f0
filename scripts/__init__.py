"""Command-line scripts: tables, figures, reproductions, benchmarks, epsilon recomputation."""
