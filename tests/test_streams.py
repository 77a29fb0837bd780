"""epam_jax.streams: scanned stages compile each block once."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from epam_jax import EPAMNet, Tuning
from epam_jax.models import variable_shapes


def test_scanned_stages_compile_each_block_once():
    """With ``scan_blocks`` the program holds one pair of blocks per stage, not every block:
    the 41 blocks' 1x1x1 convolutions are matrix products, 7 first blocks + 7 scanned pairs."""
    rgb, pose = jnp.zeros((1, 16, 32, 32, 3)), jnp.zeros((1, 16, 8, 8, 17))

    def products(tuning):
        model = EPAMNet(tuning=tuning)
        jaxpr = str(jax.make_jaxpr(model.apply)(variable_shapes(model), rgb, pose))
        return jaxpr.count("dot_general[")

    scanned, unrolled = products(Tuning()), products(Tuning(scan_blocks=False))
    assert scanned <= 0.5 * unrolled, (scanned, unrolled)
