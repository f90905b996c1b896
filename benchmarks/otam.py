"""Thin entry point: the benchmark lives in ``actdistill.bench.otam`` (also ``actdistill bench``)."""

import sys

from actdistill.bench.otam import main

if __name__ == "__main__":
    sys.exit(main())
