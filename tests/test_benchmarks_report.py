"""benchmarks.report: tables come from the newest result by its own date, and regenerate
byte for byte (so a fresh clone changes nothing)."""
import json
import os

from benchmarks import common, report


def _result(folder, name, benchmark, date, ms, cpu="Test CPU"):
    data = {"benchmark": benchmark, "date": date, "command": f"python -m benchmarks.{benchmark}",
            "machine": {"cpu_model": cpu, "cores": 2, "isa_flags": ["avx2", "fma"],
                        "load_avg": [1.0, 0.5, 0.25], "native_isa": "avx2", "jax": "0", "commit": "abc"},
            "results": [{"name": "resnet20", "ms_per_step": ms, "ratio_jaxnets_over_torch": ms / 100}]}
    (folder / name).write_text(json.dumps(data))


def test_newest_by_inner_date_and_idempotent(tmp_path, monkeypatch):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    _result(results, "b_old.json", "resnet_step_compare", "2026-12-01T10:00:00+00:00", 150.0)
    _result(results, "a_new.json", "resnet_step_compare", "2026-12-02T10:00:00+00:00", 120.0)
    os.utime(results / "a_new.json", (0, 0))           # file times must not matter
    (results / "legacy.json").write_text(json.dumps({"benchmark": "x", "results": []}))  # no date: ignored
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- report:resnet_step_compare -->\nstale 999\n"
                      "<!-- /report:resnet_step_compare -->\nend\n")
    monkeypatch.setattr(report, "RESULTS", results)
    monkeypatch.setattr(report, "ROOT", tmp_path)
    monkeypatch.setattr(common, "RESULTS", results)
    monkeypatch.setattr(report.newest_results, "__defaults__", (results,))
    assert report.main([]) == 0
    text = readme.read_text()
    assert "| resnet20 | 120 | 1.2 |" in text and "stale" not in text and "150" not in text
    assert text.startswith("intro\n") and text.endswith("<!-- /report:resnet_step_compare -->\nend\n")
    table = (results / "README.md").read_text()
    assert "## resnet_step_compare" in table and "Test CPU" in table and "avx2 fma" in table
    assert "## x" not in table
    before = {p: p.read_bytes() for p in (readme, results / "README.md")}
    assert report.main(["--check"]) == 0               # nothing would change
    assert report.main([]) == 0
    assert {p: p.read_bytes() for p in before} == before


def test_inline_values_in_prose(tmp_path, monkeypatch):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    _result(results, "r.json", "startup", "2026-12-02T10:00:00+00:00", 17.84)
    readme = tmp_path / "README.md"
    readme.write_text("in <!-- value:startup:resnet20:ms_per_step -->20<!-- /value --> s; "
                      "kept <!-- value:startup:missing:ms_per_step -->5<!-- /value -->\n")
    monkeypatch.setattr(report, "RESULTS", results)
    monkeypatch.setattr(report, "ROOT", tmp_path)
    monkeypatch.setattr(report.newest_results, "__defaults__", (results,))
    assert report.main([]) == 0
    assert readme.read_text() == ("in <!-- value:startup:resnet20:ms_per_step -->17.8<!-- /value --> s; "
                                  "kept <!-- value:startup:missing:ms_per_step -->5<!-- /value -->\n")
    assert report.main(["--check"]) == 0


def test_one_table_per_cpu(tmp_path, monkeypatch):
    """A result never stands for another CPU: each CPU keeps its newest table, newest CPU first,
    and README's marker shows the newest overall."""
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    _result(results, "amd_old.json", "lstm", "2026-12-01T10:00:00+00:00", 150.0, cpu="AMD EPYC")
    _result(results, "amd.json", "lstm", "2026-12-02T10:00:00+00:00", 140.0, cpu="AMD EPYC")
    _result(results, "intel.json", "lstm", "2026-12-03T10:00:00+00:00", 90.0, cpu="Intel Xeon")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- report:lstm -->\n<!-- /report:lstm -->\n")
    monkeypatch.setattr(report, "RESULTS", results)
    monkeypatch.setattr(report, "ROOT", tmp_path)
    assert report.main([]) == 0
    table = (results / "README.md").read_text()
    intel, amd = table.index("### on Intel Xeon; avx2 fma"), table.index("### on AMD EPYC; avx2 fma")
    assert intel < amd and "| resnet20 | 90 |" in table[intel:amd] and "| resnet20 | 140 |" in table[amd:]
    assert "150" not in table
    assert "| resnet20 | 90 |" in readme.read_text() and "140" not in readme.read_text()
    assert report.main(["--check"]) == 0


def test_machine_tag_names_the_cpu_model_for_file_names():
    amd = {"vendor": "AuthenticAMD", "family": 25, "model": 17, "model_name": "AMD EPYC"}
    intel = {"vendor": "GenuineIntel", "family": 6, "model": 143, "model_name": "Intel(R) Xeon(R) Platinum 8480+"}
    arm = {"vendor": "?", "family": None, "model": None, "model_name": "Neoverse-V2"}
    assert common.machine_tag(amd) == "amd_f25m17"
    assert common.machine_tag(intel) == "intel_f6m143"   # two Xeon generations differ by model number
    assert common.machine_tag(arm) == "neoverse_v2"
