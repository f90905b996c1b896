"""Benchmarks with one methodology (``common``); run them with ``actdistill bench NAME``."""
