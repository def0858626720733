"""`python -m benchmarks.faults [--smoke] [--json]`: the fault suite (benchmarks/faults/main.py)."""
import sys

from benchmarks.faults.main import main

sys.exit(main())
