"""Fault injection: kill/resume trials, corrupt checkpoints, bad input (`python -m benchmarks.faults`).

suite.py holds the trials and cases; `python -m benchmarks.faults --smoke --json` runs it.
"""
