"""pyfc's benchmarks: each module runs standalone (`python bench/invoke.py`) and as a
function returning rows (`run(...) -> bench.report.Result`); `python -m bench` (or
`make bench`) runs them all and prints one table (bench/suite.py)."""
