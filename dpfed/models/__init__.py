"""Recurrent models: stacked GRUs with classification or regression heads."""
