"""XLA compiler options that EPAM-Net's jitted functions need on some backends.

``remat`` marks recomputed values with optimisation barriers so the compiler
cannot merge the recomputation back into the forward pass. XLA:CPU removes
those barriers early in its pipeline (the ``cse_barrier_expander`` pass), after
which common-subexpression elimination undoes the rematerialisation: measured
on the pose stream's training step, the buffers stay the same with or without
``remat``. Keeping the pass out restores its saving (docs/performance.md) and leaves
the numbers unchanged. Other backends keep the barriers. The models' default
formulation needs no options in eval (``epam_jax.Tuning``: the stages' blocks
run as a loop); the unrolled one with ``barriers=True`` keeps each residual
block's output one buffer only under these options.

On GPU, XLA (jax 0.11.2, H100) aborts while compiling the full model's eval
forward when it tiles a matrix product fused with its neighbours for Triton
(``triton_tiling_propagation.cc: Check failed: subdim_size_accumulator ==
dim_size (784 vs. 56)``); every layer compiles alone. The products then go to
cuBLAS instead (``xla_gpu_enable_triton_gemm=False``), where bfloat16 eval runs
fast (docs/performance.md). Outside ``jit(compiler_options=...)`` the same flag
can be set for a whole process: ``XLA_FLAGS=--xla_gpu_enable_triton_gemm=false``.

Pass the options to ``jax.jit(fn, compiler_options=compiler_options())``.
"""

from __future__ import annotations

import jax

KEEP_REMAT_BARRIERS = {"xla_disable_hlo_passes": "cse_barrier_expander"}
NO_TRITON_GEMM = {"xla_gpu_enable_triton_gemm": False}


def compiler_options(backend: str | None = None) -> dict[str, str] | None:
    """Options for ``jax.jit(..., compiler_options=...)`` on ``backend`` (default: JAX's).

    On CPU they keep ``remat`` effective; on GPU they route matrix products to
    cuBLAS; elsewhere there is nothing to set (None).
    """
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return dict(KEEP_REMAT_BARRIERS)
    if backend in ("gpu", "cuda", "rocm"):
        return dict(NO_TRITON_GEMM)
    return None
