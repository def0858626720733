"""`python -m benchmarks.faults [--smoke] [--json]`: the fault suite (benchmarks/faults/suite.py)."""
import sys

from benchmarks.faults.suite import main

sys.exit(main())
