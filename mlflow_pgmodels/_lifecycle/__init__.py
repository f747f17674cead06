"""Keeping the database lean and governed: space report, prune, promotion between databases, governance."""
