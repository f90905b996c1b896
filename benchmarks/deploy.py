"""Thin entry point: the benchmark lives in ``actdistill.bench.deploy`` (also ``actdistill bench``)."""

import sys

from actdistill.bench.deploy import main

if __name__ == "__main__":
    sys.exit(main())
