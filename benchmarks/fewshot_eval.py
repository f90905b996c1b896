"""Thin entry point: the benchmark lives in ``actdistill.bench.fewshot_eval`` (also ``actdistill bench``)."""

import sys

from actdistill.bench.fewshot_eval import main

if __name__ == "__main__":
    sys.exit(main())
