"""Thin entry point: the benchmark lives in ``actdistill.bench.allocator`` (also ``actdistill bench``)."""

import sys

from actdistill.bench.allocator import main

if __name__ == "__main__":
    sys.exit(main())
