"""Thin entry point: the benchmark lives in ``actdistill.bench.data_loading`` (also ``actdistill bench``)."""

import sys

from actdistill.bench.data_loading import main

if __name__ == "__main__":
    sys.exit(main())
