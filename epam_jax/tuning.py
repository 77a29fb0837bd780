"""How EPAM-Net's layers are written for a platform: ``Tuning``, a field of every model.

A formulation changes how the arithmetic is laid out for the compiler, never the
variables (names, shapes) or the numbers beyond float rounding: one checkpoint
runs under every tuning, and the parity tests run every formulation on CPU.
Nothing here reads the default backend while a model is traced: pick the tuning
from the devices a function is compiled for (``Tuning.for_devices``), as the
package's command-line tools and training library do, or keep the default,
``Tuning()``, the CPU's, fast there under a plain ``jax.jit(model.apply)`` and
correct on every platform.

    net = EPAMNet(tuning=Tuning.for_devices(jax.devices()))

``PLATFORM_TUNINGS`` names the formulation per platform.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

CONVOLUTIONS = ("matmul", "xla")


@dataclasses.dataclass(frozen=True)
class Tuning:
    """The formulation of EPAM-Net's layers (hashable, so a flax module field).

    convolutions: 'matmul' writes every convolution as matrix products and
        shifted multiply-adds (XLA:CPU runs its own grouped and 3-channel
        convolutions slowly); 'xla' uses ``lax.conv_general_dilated``
        (cuDNN on GPU), with 1x1x1 stride-1 convolutions as matrix products.
    scan_blocks: the identical blocks of each stage (all but its first, in
        pairs, since every other block has squeeze-excitation) run as one
        ``lax.scan``. The loop's carry is a buffer by construction, so no block
        recomputes the residual sums before it; and each block is compiled once
        (the full model compiles faster, see docs/performance.md). In eval the
        loop reads convolution weights with BatchNorm folded in and padding
        applied, prepared before it for all blocks at once.
    custom_gradients: hand-written backward passes for BatchNorm, swish and the
        convolutions that keep fewer full-size intermediates (faster on CPU);
        off, plain autodiff of the same forward pass.
    barriers: optimisation barriers that keep each unscanned block's output one
        buffer. XLA removes them unless the function is jitted with
        ``epam_jax.xla_options.compiler_options()``; with ``scan_blocks`` the
        loop does that job.
    eval_channel_multiple: in eval, bottleneck channels are zero-padded to a
        multiple of this (54 -> 56): XLA:CPU's elementwise loops slow down on a
        channel axis that is not a whole number of vectors. 1: no padding.
    kernel_grad_chunk_bytes: with ``custom_gradients``, the depthwise kernel
        gradient reduces over chunks of frames this large so each chunk's taps
        are read from cache; 0: one reduction over the whole tensor.
    eval_chunk: clips per step of the eval loop over a batch (``nn.scan``);
        0 runs the whole batch at once. Eval statistics are per clip, so the
        numbers do not depend on it. On CPU one clip at a time keeps a clip's
        activations in cache (measured faster, see docs/performance.md).

    The defaults are the CPU's tuning; ``for_platform``/``for_devices`` give
    each platform's.
    """

    convolutions: str = "matmul"
    scan_blocks: bool = True
    custom_gradients: bool = True
    barriers: bool = False
    eval_channel_multiple: int = 8
    kernel_grad_chunk_bytes: int = 4 << 20
    eval_chunk: int = 1

    def __post_init__(self):
        if self.convolutions not in CONVOLUTIONS:
            raise ValueError(
                f"Tuning.convolutions must be one of {CONVOLUTIONS}, got {self.convolutions!r}"
            )
        for name in ("scan_blocks", "custom_gradients", "barriers"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Tuning.{name} must be a bool, got {getattr(self, name)!r}")
        for name, low in (("eval_channel_multiple", 1), ("kernel_grad_chunk_bytes", 0),
                          ("eval_chunk", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"Tuning.{name} must be an int >= {low}, got {value!r}")

    def replace(self, **changes: Any) -> Tuning:
        """A copy with ``changes`` (checked like the constructor's arguments)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def for_platform(cls, platform: str) -> Tuning:
        """The tuning for devices of ``platform`` ('cpu', 'gpu', 'cuda', 'rocm', 'tpu')."""
        key = {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)
        if key not in PLATFORM_TUNINGS:
            raise ValueError(
                f"no tuning for platform {platform!r}; known: {sorted(PLATFORM_TUNINGS)} "
                "(or build one: Tuning(...))"
            )
        return PLATFORM_TUNINGS[key]

    @classmethod
    def for_devices(cls, devices: Iterable[Any]) -> Tuning:
        """The tuning for the devices a function is compiled for (``jax.Device``s, one platform).

        Over several devices the eval batch runs whole (``eval_chunk=0``): under
        ``jit`` it is split across them, and a loop over its clips would gather
        every clip onto every device.
        """
        devices = list(devices)
        platforms = {d.platform for d in devices}
        if len(platforms) != 1:
            found = sorted(platforms) or "none"
            raise ValueError(f"Tuning.for_devices needs devices of one platform, got {found}")
        tuning = cls.for_platform(platforms.pop())
        return tuning.replace(eval_chunk=0) if len(devices) > 1 else tuning


# CPU: the defaults. GPU and TPU: the compiler's own convolutions and autodiff,
# whole batches, no CPU cache blocking or channel padding.
_ACCELERATOR = Tuning(
    convolutions="xla",
    custom_gradients=False,
    eval_channel_multiple=1,
    kernel_grad_chunk_bytes=0,
    eval_chunk=0,
)
PLATFORM_TUNINGS: dict[str, Tuning] = {
    "cpu": Tuning(),
    "gpu": _ACCELERATOR,
    "tpu": _ACCELERATOR,
}
