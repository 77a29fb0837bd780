"""epam_jax.xla_options: the compiler options chosen per backend."""

from __future__ import annotations

from epam_jax.xla_options import KEEP_REMAT_BARRIERS, NO_TRITON_GEMM, compiler_options


def test_compiler_options_per_backend():
    assert compiler_options("cpu") == KEEP_REMAT_BARRIERS
    assert compiler_options("gpu") == compiler_options("cuda") == NO_TRITON_GEMM
    assert compiler_options("tpu") is None
