"""EPAM-Net in JAX/Flax: pose-driven attention-guided two-stream action recognition.

NDHWC throughout: RGB clips (N, T, H, W, 3), pose heatmaps (N, T, H, W, 17).
"""

from epam_jax.attention import CBAMSpatialEfficientTemporal, SpatialTemporalAttention
from epam_jax.concurrent_eval import ConcurrentStreams
from epam_jax.layers import BatchNorm, temporal_shift
from epam_jax.models import EPAMBackbone, EPAMNet, Features, I3DHead, SingleStreamNet, fuse
from epam_jax.streams import BlockX3D, X3DTemporalShift, X3DTemporalShiftPose
from epam_jax.tuning import Tuning

__version__ = "0.1.0"

__all__ = [
    "BatchNorm",
    "BlockX3D",
    "CBAMSpatialEfficientTemporal",
    "ConcurrentStreams",
    "EPAMBackbone",
    "EPAMNet",
    "Features",
    "I3DHead",
    "SingleStreamNet",
    "SpatialTemporalAttention",
    "Tuning",
    "X3DTemporalShift",
    "X3DTemporalShiftPose",
    "fuse",
    "temporal_shift",
]
