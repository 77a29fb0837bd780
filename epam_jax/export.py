"""Export a trained EPAM-Net (or backbone) for serving: StableHLO or ONNX, with a JSON card.

    python -m epam_jax.export CKPT OUT --format stablehlo|onnx [--outputs a,b]
        [--fusion residual] [--size S] [--class-names FILE]

``CKPT`` is what ``epam_jax.checkpoints.load_model`` reads (an epam-jax checkpoint directory or
a PyTorch ``.pth``). ``OUT`` gets the artifact, ``OUT.json`` what a caller needs to feed it
(input shapes, layout, normalisation, frame sampling), its outputs, the versions and the
measured agreement with ``model.apply``. The weights are baked in; the batch is dynamic.

Formats:

- ``stablehlo``: ``jax.export`` of a ``jax.jit`` function for the platforms 'cpu' and
  'cuda', bytes of ``Exported.serialize()``; run it with
  ``jax.export.deserialize(data).call(rgb, heatmap)`` (a dict of outputs). Each platform
  gets its own formulation (``jax.lax.platform_dependent``): on the CPU the clips of a
  batch run one after another (``lax.map``) under ``Tuning.for_platform('cpu')``, which is
  what the model's own eval loop (``Tuning.eval_chunk=1``) does; elsewhere the whole batch
  at once (``jax.vmap``) under ``Tuning.for_platform('gpu')``.
- ``onnx``: jax2onnx (the ``onnx`` extra) of the portable formulation (``PORTABLE``:
  ``lax.conv_general_dilated`` convolutions, no channel padding, no cache blocking), inputs
  'rgb' and 'heatmap', one named output per chosen array; run it with onnxruntime.

Why a clip at a time: under a symbolic batch size the model's input checks compare the
batch with the other dimensions (``min(shape) < 1`` in ``streams.check_clip``) and its eval
loop sizes chunks of the batch (``min(eval_chunk, batch)``, ``nn.scan`` over a length that
must be known), both of which need a concrete batch (``eval_chunk=0`` alone does not get
past the first). So the model is always traced on one clip, shape (1, ...), and the batch
is added around it: ``lax.map``/``vmap`` for StableHLO, an ONNX ``Scan`` over the batch axis
for ONNX. A symbolic batch inside jax2onnx 0.17.1 does not get through: ``vmap`` under
jax2onnx's patched flax modules fails ("Batching rule for 'linen.dropout' not
implemented"), and a jaxpr vmapped beforehand stops in its ``lax.pad`` lowering (the
temporal shift), which builds an ``onnx_ir.Shape`` from the symbolic dimension itself
(with that lowering patched at run time the graph converts and matches, but the export
would then depend on patching jax2onnx's internals). The one-clip graph in a ``Scan``
needs neither, and runs clip after clip as the CPU tuning does.

Before anything is written the artifact is run (``deserialize(...).call``; onnxruntime's
CPUExecutionProvider) on random clips at batch 1 and 2 and compared with a jitted
``model.apply``; an export whose largest difference, relative to the largest reference
value of each output, exceeds ``TOLERANCE`` is refused. Both files are written atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from epam_jax.checkpoints import LoadedModel, load_model
from epam_jax.cli import OneLineErrors, atomic_output, output_dirs, rgb_side, run_cli
from epam_jax.data.device_inputs import DeviceInputs
from epam_jax.data.pipeline import ClipConfig
from epam_jax.data.transforms import RGB_MEAN, RGB_STD, rgb_normalization
from epam_jax.forward import jitted_forward, named_outputs
from epam_jax.models import FUSIONS
from epam_jax.tuning import Tuning

FORMATS = ("stablehlo", "onnx")
PLATFORMS = ("cpu", "cuda")
BATCH = "batch"  # the symbolic batch dimension's name (StableHLO, ONNX and the JSON)
CHECK_BATCHES = (1, 2)
# Largest |artifact - model.apply| / max |model.apply| per output, over the check batches.
TOLERANCE = {"stablehlo": 1e-6, "onnx": 1e-4}
ONNX_OPSET = 23
ONNX_EXTRA = "pip install 'epam-jax[onnx]'"
PORTABLE = Tuning(convolutions="xla", eval_channel_multiple=1, eval_chunk=0,
                  custom_gradients=False, kernel_grad_chunk_bytes=0)

# Names accepted by --outputs: groups and the arrays of epam_jax.extract they stand for.
GROUPS = {
    "logits": ("rgb_logits", "pose_logits"),
    "features": ("rgb_features", "pose_features"),
    "pooled": ("rgb_pooled", "pose_pooled"),
}
HEAD_OUTPUTS = ("rgb_logits", "pose_logits", "scores")
BACKBONE_OUTPUTS = ("attention", "rgb_features", "pose_features", "rgb_pooled", "pose_pooled")
DEFAULT_OUTPUTS = {True: ("logits",), False: ("features", "attention")}
DESCRIPTIONS = {
    "rgb_logits": "RGB head logits (of rgb + rgb * attention)",
    "pose_logits": "pose head logits",
    "scores": "fused score rgb_logits + pose_logits (EPAM-Net's prediction; argmax = class)",
    "attention": "spatial x temporal attention in [0, 1] on the RGB feature grid",
    "rgb_features": "RGB features after the attention (see 'fusion')",
    "pose_features": "pose features",
    "rgb_pooled": "rgb_features averaged over time and space",
    "pose_pooled": "pose_features averaged over time and space",
}


def output_names(requested: Sequence[str] | None, has_heads: bool) -> tuple[str, ...]:
    """The arrays to export for ``requested`` names or groups (the model's default when
    None), in order, without repeats; unknown names and head outputs of a backbone are
    refused."""
    names = list(DEFAULT_OUTPUTS[has_heads] if not requested else requested)
    known = (HEAD_OUTPUTS if has_heads else ()) + BACKBONE_OUTPUTS
    out: list[str] = []
    for name in names:
        for array in GROUPS.get(name, (name,)):
            if array not in known:
                if array in HEAD_OUTPUTS:
                    raise ValueError(
                        f"output {name!r} needs the classification heads, and this is a "
                        f"backbone checkpoint; choose from {_choices(False)}")
                raise ValueError(f"unknown output {name!r}; choose from {_choices(has_heads)}")
            if array not in out:
                out.append(array)
    if not out:
        raise ValueError(f"no outputs chosen; choose from {_choices(has_heads)}")
    return tuple(out)


def _choices(has_heads: bool) -> str:
    singles = (HEAD_OUTPUTS if has_heads else ()) + BACKBONE_OUTPUTS
    groups = [g for g in GROUPS if has_heads or g != "logits"]
    return ", ".join(groups + list(singles))


def _pooling(names: Sequence[str]) -> str:
    unpooled = any(n.endswith("_features") for n in names)
    pooled = any(n.endswith("_pooled") for n in names)
    return "both" if unpooled and pooled else "unpooled" if unpooled else "pooled"


def clip_function(loaded: LoadedModel, tuning: Tuning, names: Sequence[str],
                  fusion: str) -> Callable[[jax.Array, jax.Array], dict[str, jax.Array]]:
    """``one(rgb (16, S, S, 3), heatmap (48, S/4, S/4, 17)) -> {name: array}`` for one clip:
    ``forward.named_outputs`` of the model under ``tuning``, its variables closed over (so they
    become constants of whatever traces it)."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    model = loaded.model.clone(tuning=tuning)
    variables = loaded.variables
    heads, pooling = loaded.has_heads, _pooling(names)

    def one(rgb: jax.Array, heatmap: jax.Array) -> dict[str, jax.Array]:
        out = model.apply(variables, rgb[None], heatmap[None],
                          method=lambda m, r, p: named_outputs(m, r, p, fusion, pooling, heads))
        return {name: out[name][0] for name in names}

    return one


def batched_function(loaded: LoadedModel, names: Sequence[str], fusion: str
                     ) -> Callable[[jax.Array, jax.Array], dict[str, jax.Array]]:
    """The StableHLO export's function of a batch: clip after clip (``lax.map``) with the
    CPU's tuning on 'cpu', the whole batch (``vmap``) with the GPU's elsewhere."""
    cpu = clip_function(loaded, Tuning.for_platform("cpu"), names, fusion)
    other = clip_function(loaded, Tuning.for_platform("gpu"), names, fusion)

    def on_cpu(rgb, heatmap):
        return jax.lax.map(lambda clip: cpu(*clip), (rgb, heatmap))

    def elsewhere(rgb, heatmap):
        return jax.vmap(other)(rgb, heatmap)

    def forward(rgb: jax.Array, heatmap: jax.Array) -> dict[str, jax.Array]:
        return jax.lax.platform_dependent(rgb, heatmap, cpu=on_cpu, default=elsewhere)

    return forward


def input_shapes(clip: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Per-clip input shapes of the clip geometry ``clip`` (``LoadedModel.clip_fields``)."""
    frames = clip["clip_len"]
    rgb_frames = len(range(0, frames, clip["rgb_stride"]))
    return {"rgb": (rgb_frames, *clip["rgb_size"], 3),
            "heatmap": (frames, *clip["heatmap_size"], 17)}


def _clip_defaults() -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(ClipConfig)}


def _ordinal(n: int) -> str:
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# --------------------------------------------------------------------------- the formats


@dataclass
class Artifact:
    """An exported model: the file's bytes and its description (the JSON)."""

    data: bytes
    info: dict[str, Any]


def _stablehlo(loaded: LoadedModel, names: Sequence[str], fusion: str,
               clip: Mapping[str, Any]) -> tuple[bytes, dict[str, Any], Callable[..., dict]]:
    forward = batched_function(loaded, names, fusion)
    (batch,) = jax.export.symbolic_shape(BATCH)
    specs = [jax.ShapeDtypeStruct((batch, *shape), jnp.float32)
             for shape in input_shapes(clip).values()]
    exported = jax.export.export(jax.jit(forward), platforms=PLATFORMS)(*specs)
    data = bytes(exported.serialize())
    runner = jax.export.deserialize(bytearray(data))

    def run(rgb: np.ndarray, heatmap: np.ndarray) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in runner.call(rgb, heatmap).items()}

    tunings = {"cpu": Tuning.for_platform("cpu"), "cuda": Tuning.for_platform("gpu")}
    extra = {
        "platforms": list(exported.platforms),
        "calling_convention_version": exported.calling_convention_version,
        "formulation": {
            "cpu": f"lax.map over the clips, {tunings['cpu']!r}",
            "cuda": f"vmap over the clips, {tunings['cuda']!r}",
        },
        "load": "jax.export.deserialize(open(OUT, 'rb').read()).call(rgb, heatmap) -> dict",
    }
    return data, extra, run


def _import_onnx() -> tuple[Any, Any, Any]:
    """``(jax2onnx.to_onnx, onnx, onnxruntime)``, or an ImportError naming the extra."""
    try:
        import onnx
        import onnxruntime
        from jax2onnx import to_onnx
    except ImportError as err:
        raise ImportError(
            f"ONNX export needs jax2onnx, onnx and onnxruntime ({err.name or err} is missing): "
            f"{ONNX_EXTRA}") from err
    return to_onnx, onnx, onnxruntime


def onnx_model(loaded: LoadedModel, names: Sequence[str], fusion: str,
               clip: Mapping[str, Any]) -> Any:
    """The ONNX ModelProto: jax2onnx's graph of one clip (``PORTABLE``), run over the
    batch axis by an ONNX ``Scan`` whose inputs 'rgb' and 'heatmap' have a dynamic first
    dimension named 'batch'."""
    to_onnx, onnx, _ = _import_onnx()
    from onnx import helper

    one = clip_function(loaded, PORTABLE, names, fusion)
    shapes = input_shapes(clip)
    def arrays(rgb: jax.Array, heatmap: jax.Array) -> tuple[jax.Array, ...]:
        out = one(rgb, heatmap)
        return tuple(out[n] for n in names)

    clip = to_onnx(
        arrays,
        [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes.values()],
        model_name="epam_clip",
        opset=ONNX_OPSET,
        input_names=[f"{k}_clip" for k in shapes],
        output_names=[f"{n}_clip" for n in names],
    )
    body = onnx.GraphProto()
    body.CopyFrom(clip.graph)
    body.name = "one_clip"
    weights = list(body.initializer)  # outer-scope values, visible inside the Scan body
    del body.initializer[:]

    def batched(name: str, value: Any) -> Any:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        return helper.make_tensor_value_info(name, value.type.tensor_type.elem_type,
                                             [BATCH, *dims])

    inputs = [batched(k, v) for k, v in zip(shapes, clip.graph.input, strict=True)]
    outputs = [batched(n, v) for n, v in zip(names, clip.graph.output, strict=True)]
    scan = helper.make_node("Scan", list(shapes), list(names), name="over_clips", body=body,
                            num_scan_inputs=len(shapes))
    graph = helper.make_graph([scan], "epam_jax", inputs, outputs, initializer=weights)
    model = helper.make_model(graph, opset_imports=list(clip.opset_import),
                              functions=list(clip.functions), ir_version=clip.ir_version,
                              producer_name="epam_jax.export")
    _drop_unused_initializers(model.graph)
    onnx.checker.check_model(model)
    return model


def _drop_unused_initializers(graph: Any) -> set[str]:
    """Remove the initializers no node of ``graph`` or of its subgraphs reads (jax2onnx
    leaves some in its loop bodies, and onnxruntime warns about each); return the names
    the graph reads from outside itself or its own initializers."""
    from onnx import AttributeProto

    read: set[str] = {o.name for o in graph.output}
    for node in graph.node:
        read.update(node.input)
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                read |= _drop_unused_initializers(sub)
    kept = [t for t in graph.initializer if t.name in read]
    if len(kept) < len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return read


def _onnx(loaded: LoadedModel, names: Sequence[str], fusion: str,
          clip: Mapping[str, Any]) -> tuple[bytes, dict[str, Any], Callable[..., dict]]:
    _, _, ort = _import_onnx()
    model = onnx_model(loaded, names, fusion, clip)
    data = model.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # no warnings about initializers the optimiser drops
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def run(rgb: np.ndarray, heatmap: np.ndarray) -> dict[str, np.ndarray]:
        got = session.run(list(names), {"rgb": rgb, "heatmap": heatmap})
        return dict(zip(names, got, strict=True))

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    extra = {
        "opset": int(opset),
        "formulation": f"one clip traced by jax2onnx under {PORTABLE!r}, an ONNX Scan over "
                       "the batch axis",
        "load": "onnxruntime.InferenceSession(OUT).run(None, {'rgb': rgb, 'heatmap': heatmap})",
    }
    return data, extra, run


# --------------------------------------------------------------------------- checking


def check_inputs(batch: int, clip: Mapping[str, Any], seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Random clips: normalised-looking RGB and heatmaps in [0, 1)."""
    rng = np.random.default_rng(seed)
    shapes = input_shapes(clip)
    rgb = rng.standard_normal((batch, *shapes["rgb"]), dtype=np.float32)
    heatmap = rng.random((batch, *shapes["heatmap"]), dtype=np.float32)
    return rgb, heatmap


def reference_function(loaded: LoadedModel, names: Sequence[str], fusion: str
                       ) -> Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]:
    """``model.apply`` of the loaded model as it is (whole batches, its own tuning), through
    the jitted forward pass ``epam_jax.extract`` and ``predict`` use (one compile per
    model, fusion, pooling and batch shape, shared with them)."""
    variables = jax.device_put(loaded.variables)
    pooling, inputs = _pooling(names), DeviceInputs()

    def run(rgb: np.ndarray, heatmap: np.ndarray) -> dict[str, np.ndarray]:
        out = jitted_forward()(variables, {"rgb": rgb, "heatmap": heatmap},
                                model=loaded.model, fusion=fusion, pooling=pooling,
                                inputs=inputs)
        return {n: np.asarray(out[n]) for n in names}

    return run


def agreement(run: Callable[..., dict], reference: Callable[..., dict],
              clip: Mapping[str, Any],
              batches: Sequence[int] = CHECK_BATCHES) -> dict[str, Any]:
    """Largest differences of ``run`` at each batch size and ``reference`` on the same
    random clips: absolute, and relative to each output's largest reference magnitude.

    The reference sees all the clips in one batch (eval treats every clip on its own), so
    it compiles once whatever the batch sizes checked."""
    clips = [check_inputs(batch, clip, seed=batch) for batch in batches]
    want = reference(np.concatenate([c[0] for c in clips]),
                     np.concatenate([c[1] for c in clips]))
    per_output: dict[str, dict[str, float]] = {}
    start = 0
    for batch, (rgb, heatmap) in zip(batches, clips, strict=True):
        got = run(rgb, heatmap)
        for name, ref_all in want.items():
            ref = np.asarray(ref_all[start:start + batch], np.float64)
            value = np.asarray(got[name], np.float64)
            if value.shape != ref.shape:
                raise RuntimeError(f"exported {name} has shape {value.shape} at batch {batch}, "
                                   f"model.apply {ref.shape}")
            diff = float(np.abs(value - ref).max())
            rel = diff / max(float(np.abs(ref).max()), 1e-30)
            row = per_output.setdefault(name, {"max_abs_diff": 0.0, "max_rel_diff": 0.0})
            row["max_abs_diff"] = max(row["max_abs_diff"], diff)
            row["max_rel_diff"] = max(row["max_rel_diff"], rel)
        start += batch
    return {
        "batch_sizes": list(batches),
        "inputs": "random: standard normal RGB, uniform [0, 1) heatmaps; the reference runs "
                  f"all {start} clips in one batch",
        "max_abs_diff": max(r["max_abs_diff"] for r in per_output.values()),
        "max_rel_diff": max(r["max_rel_diff"] for r in per_output.values()),
        "per_output": per_output,
    }


# --------------------------------------------------------------------------- the card


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe(loaded: LoadedModel, fmt: str, names: Sequence[str], fusion: str,
             clip: Mapping[str, Any], class_names: Sequence[str] | None) -> dict[str, Any]:
    """The JSON written beside the artifact (without the format's own fields)."""
    defaults = _clip_defaults()
    shapes = input_shapes(clip)
    frames, stride = clip["clip_len"], clip["rgb_stride"]
    one = clip_function(loaded, Tuning(), names, fusion)
    out_shapes = jax.eval_shape(one, *(jax.ShapeDtypeStruct(s, jnp.float32)
                                       for s in shapes.values()))
    mean, inv_std = rgb_normalization()
    num_classes = loaded.meta.get("num_classes") if loaded.has_heads else None
    return {
        "format": fmt,
        "model": loaded.meta["model"],
        "attention_type": loaded.meta.get("attention_type"),
        "checkpoint": loaded.meta.get("checkpoint"),
        "num_classes": num_classes,
        "class_names": None if class_names is None else list(class_names),
        "fusion": fusion,
        "inputs": [
            {"name": "rgb", "shape": [BATCH, *shapes["rgb"]], "dtype": "float32",
             "layout": "NDHWC",
             "description": "RGB frames, normalised: (pixel - mean) / std per channel, "
                            "pixels in 0..255, channel order R, G, B"},
            {"name": "heatmap", "shape": [BATCH, *shapes["heatmap"]], "dtype": "float32",
             "layout": "NDHWC",
             "description": "COCO-17 keypoint heatmaps in [0, 1], one channel per joint"},
        ],
        "outputs": [
            {"name": n, "shape": [BATCH, *out_shapes[n].shape], "dtype": "float32",
             "description": DESCRIPTIONS[n]} for n in names
        ],
        "preprocessing": {
            "rgb_normalization": {
                "mean": list(RGB_MEAN), "std": list(RGB_STD),
                "float32_mean": mean.tolist(), "float32_inverse_std": inv_std.tolist(),
                "formula": "(pixel - mean) * inverse_std (epam_jax.data.normalize_rgb)",
            },
            "sampling": (
                f"{frames} frame indices by PoseC3D's UniformSampleFrames in "
                "test mode (deterministic, epam_jax.data.eval_clip_indices): the video is "
                f"split into {frames} equal segments and one frame taken from "
                f"each (shorter videos: consecutive frames); the RGB clip is every "
                f"{_ordinal(stride)} of them ({shapes['rgb'][0]} frames), the heatmaps "
                f"use all {frames}"),
            "rgb_frames": {"count": shapes["rgb"][0], "stride": stride,
                           "size": list(clip["rgb_size"]),
                           "crop": "the box around all persons over the whole video, enlarged "
                                   "1.25x, square, resized to size x size "
                                   "(python -m epam_jax.prepare; epam_jax.realvideo)"},
            "heatmaps": {
                "count": frames, "size": list(clip["heatmap_size"]),
                "keypoints": "COCO-17 (nose, eyes, ears, shoulders, elbows, wrists, hips, "
                             "knees, ankles; left before right)",
                "sigma": clip["sigma"], "use_score": defaults["use_score"],
                "max_persons": defaults["num_persons"],
                "drawing": f"a Gaussian of sigma {clip['sigma']:g} heatmap pixels at each "
                           "keypoint, times its score, cut at 3 sigma, max over persons, after the "
                           "keypoints are moved into their compact box and resized to the "
                           "heatmap size (epam_jax.data.generate_heatmaps)"},
            "pipeline": "epam_jax.data.make_sample(ann, ClipConfig(clip_len, rgb_stride, "
                        "rgb_size, heatmap_size, sigma as above), train=False) gives 'rgb' "
                        "and 'heatmap'",
        },
        "versions": {
            "epam_jax": _version("epam-jax"), "jax": jax.__version__,
            "jaxlib": _version("jaxlib"), "flax": _version("flax"),
            **({"jax2onnx": _version("jax2onnx"), "onnx": _version("onnx"),
                "onnxruntime": _version("onnxruntime")} if fmt == "onnx" else {}),
        },
    }


def class_names_for(loaded: LoadedModel, names: Sequence[str] | None) -> list[str] | None:
    """The classes of an EPAM-Net's outputs: ``names`` (e.g. --class-names), else the ones
    its checkpoint records ('class_names' in its description), else the NTU RGB+D names for
    60 and 120 classes and "class i" otherwise; None for a backbone."""
    from epam_jax.data.ntu_classes import class_names

    if not loaded.has_heads:
        if names is not None:
            raise ValueError("class names are for an EPAM-Net checkpoint; a backbone has no "
                             "classifier")
        return None
    recorded = names if names is not None else loaded.meta.get("class_names")
    return class_names(int(loaded.meta["num_classes"]), recorded)


def export(loaded: LoadedModel, fmt: str, *, outputs: Sequence[str] | None = None,
           fusion: str = "multiply", size: int | None = None,
           class_names: Sequence[str] | None = None, check: bool = True) -> Artifact:
    """Export ``loaded`` as ``fmt`` ('stablehlo' or 'onnx') for the clip geometry its
    checkpoint records (``size``: another square RGB side, heatmaps size / 4); with
    ``check``, measure its agreement with ``model.apply`` (``CHECK_BATCHES``) and refuse it
    above ``TOLERANCE``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    clip = loaded.clip_fields(size=size)
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    names = output_names(outputs, loaded.has_heads)
    if fmt == "onnx":
        _import_onnx()  # the missing extra is reported before any tracing
    class_names = class_names_for(loaded, class_names)
    info = describe(loaded, fmt, names, fusion, clip, class_names)
    build = _stablehlo if fmt == "stablehlo" else _onnx
    data, extra, run = build(loaded, names, fusion, clip)
    info |= extra
    if check:
        measured = agreement(run, reference_function(loaded, names, fusion), clip)
        measured |= {"tolerance_rel": TOLERANCE[fmt],
                     "reference": "jax.jit(model.apply) of the checkpoint's model "
                                  f"({loaded.model.tuning!r}), on "
                                  f"{jax.devices()[0].platform}",
                     "runtime": ("jax.export.deserialize(...).call" if fmt == "stablehlo"
                                 else "onnxruntime CPUExecutionProvider")}
        if not measured["max_rel_diff"] <= TOLERANCE[fmt]:
            worst = max(measured["per_output"],
                        key=lambda n: measured["per_output"][n]["max_rel_diff"])
            raise RuntimeError(
                f"the {fmt} export differs from model.apply by {measured['max_rel_diff']:.2e} "
                f"(relative, {worst}) > {TOLERANCE[fmt]:.0e}; nothing written")
        info["agreement"] = measured
    else:
        info["agreement"] = None
    return Artifact(data, info)


def save(artifact: Artifact, out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the artifact to ``out`` and its card to ``out.json``, each atomically; the
    card goes last, and a failure writing it removes the artifact again."""
    out = Path(out)
    card = out.with_name(out.name + ".json")
    info = dict(artifact.info, file=out.name, bytes=len(artifact.data))
    with atomic_output(out) as tmp:
        tmp.write_bytes(artifact.data)
    try:
        with atomic_output(card) as tmp:
            tmp.write_text(json.dumps(info, indent=2) + "\n")
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out, card


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="python -m epam_jax.export",
        description="Export an EPAM-Net checkpoint as StableHLO or ONNX (dynamic batch, "
                    "weights included) with a JSON description beside it.",
    )
    parser.add_argument("checkpoint", help="epam-jax checkpoint directory or PyTorch .pth")
    parser.add_argument("out", help="artifact path; the description goes to OUT.json")
    parser.add_argument("--format", required=True,
                        help=f"{' or '.join(FORMATS)} (onnx needs {ONNX_EXTRA})")
    parser.add_argument("--outputs",
                        help="comma-separated arrays or groups: logits (rgb_logits, "
                             "pose_logits), scores, attention, features, pooled, or single "
                             "names; default logits (EPAM-Net), features,attention (backbone)")
    parser.add_argument("--fusion", choices=FUSIONS, default="multiply",
                        help="RGB features exported: rgb*attention (default), "
                             "rgb+rgb*attention (what the RGB head sees), or raw")
    parser.add_argument("--size", type=rgb_side,
                        help="RGB side (heatmaps are size/4); default: the checkpoint's")
    parser.add_argument("--class-names", help="text file, one class name per line")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the comparison with model.apply (agreement: null)")
    return parser


def main(argv: Sequence[str] | None = None) -> tuple[Path, Path]:
    args = build_parser().parse_args(argv)
    if args.format not in FORMATS:
        raise ValueError(f"unknown format {args.format!r}; choose from {', '.join(FORMATS)}")
    if args.format == "onnx":
        _import_onnx()
    out = Path(args.out)
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a directory; OUT is the artifact's file name")
    # made before the slow part, and removed again if the export fails
    with output_dirs(out.parent):
        return _export_cli(args, out)


def _export_cli(args: argparse.Namespace, out: Path) -> tuple[Path, Path]:
    """``main``'s work once the output folder exists."""
    names = None
    if args.class_names is not None:
        from epam_jax.data.datasets import read_names

        names = read_names(args.class_names)
    requested = None
    if args.outputs is not None:
        requested = [n.strip() for n in args.outputs.split(",") if n.strip()]
        if not requested:
            raise ValueError("--outputs is empty")
    loaded = load_model(args.checkpoint)
    output_names(requested, loaded.has_heads)  # refuse a bad name before the slow part
    artifact = export(loaded, args.format, outputs=requested, fusion=args.fusion,
                      size=args.size, class_names=names, check=not args.no_check)
    paths = save(artifact, out)
    measured = artifact.info["agreement"]
    summary = "not checked" if measured is None else (
        f"max relative difference {measured['max_rel_diff']:.1e} "
        f"(abs {measured['max_abs_diff']:.1e}) at batch "
        + ", ".join(map(str, measured["batch_sizes"])))
    print(f"wrote {paths[0]} ({len(artifact.data) / 2**20:.1f} MiB, {args.format}, outputs "
          f"{', '.join(o['name'] for o in artifact.info['outputs'])}): {summary}")
    print(f"wrote {paths[1]}")
    return paths


if __name__ == "__main__":
    run_cli(main)
