"""ringdist-bench: collective benchmarks in the style of nccl-tests (installed as `ringdist_bench`)."""
