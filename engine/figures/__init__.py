"""Figures, drawn headless (matplotlib's Agg backend, set here before any figure module imports pyplot)."""

import matplotlib

matplotlib.use("Agg")
