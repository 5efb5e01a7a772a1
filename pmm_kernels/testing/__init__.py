"""Helpers for tests, benchmarks and developers, never used by the product path.

:mod:`pmm_kernels.testing.authors_ops` ports the PMM authors' A-Hard-Mix step as a baseline;
:mod:`pmm_kernels.testing.cases` is the op's case table that the static GPU check, the Triton
tests and the benchmarks share; :mod:`pmm_kernels.testing.static_check` compiles every Triton
launch for sm_80 and sm_90 without a GPU (``python -m pmm_kernels.testing.static_check``).
"""
