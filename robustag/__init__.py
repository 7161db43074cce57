"""robustag: robustness benchmarking for personalized tag recommendation."""

__version__ = "0.1.0"
