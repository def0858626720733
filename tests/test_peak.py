"""benchmarks.peak: the measured peak is a throughput, not a latency, and names its CPU."""
import shutil

import pytest

from benchmarks import peak


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_peak_is_fma_throughput_of_the_widest_isa():
    p = peak.cpu_peak()
    flags = set(peak.cpu_identity()["flags"])
    if not ({"avx512f", "fma"} & flags):
        pytest.skip("no FMA vector unit")
    assert p["fp32_lanes"] == (16 if "avx512f" in flags else 8)
    # Every x86 core with FMA retires at least one full-width FMA per cycle (Zen 4's 512-bit
    # operations: two 256-bit halves on two pipes) and none more than two. A latency-bound loop
    # (one dependent chain: 4-cycle FMA latency) would read 0.25.
    assert 0.6 <= p["fma_pipes_full_width"] <= 2.3, p
    assert 0.8e9 <= p["clock_hz"] <= 6.5e9, p
    assert p["fp32_flops_per_s"] == pytest.approx(
        p["fp32_flops_per_cycle_per_core"] * p["clock_hz"] * p["cores"], rel=1e-9)
    if "avx512_bf16" in flags:
        assert p["bf16_flops_per_s"] >= 2 * p["fp32_flops_per_s"]


def test_fraction_of_peak(monkeypatch):
    monkeypatch.setattr(peak, "cpu_peak", lambda: {"fp32_flops_per_s": 200e9, "bf16_flops_per_s": 400e9})
    assert peak.fraction_of_peak(50e9) == pytest.approx(0.25)
    assert peak.fraction_of_peak(50e9, "bfloat16") == pytest.approx(0.125)
    row = peak.efficiency(1e9, 10.0, prefix="torch_")        # 1 GFLOP in 10 ms: 100 GFLOP/s
    assert row == {"torch_gflops_per_s": pytest.approx(100.0), "torch_fraction_of_peak": 0.5}
    assert peak.efficiency(None, 10.0)["fraction_of_peak"] is None
