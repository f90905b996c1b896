"""Thin entry point: the benchmark lives in ``actdistill.bench.teacher_cache`` (also ``actdistill bench``)."""

import sys

from actdistill.bench.teacher_cache import main

if __name__ == "__main__":
    sys.exit(main())
