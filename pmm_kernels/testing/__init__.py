"""Helpers for tests and benchmarks, never used by the product path.

:mod:`pmm_kernels.testing.authors_ops` ports the PMM authors' A-Hard-Mix step as a baseline.
"""
