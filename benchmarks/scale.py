"""Thin entry point: the benchmark lives in ``actdistill.bench.scale`` (also ``actdistill bench``)."""

import sys

from actdistill.bench.scale import main

if __name__ == "__main__":
    sys.exit(main())
