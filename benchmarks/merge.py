"""One side-by-side table from several ``benchmarks.run --json`` files.

    python -m benchmarks.merge RUN.json [RUN.json ...] [--json MERGED.json]

For runs of the same machine made in parts (one framework, or some batches, at
a time). Per configuration (framework, mode, batch, dtype, JAX's runner, tuning
and allocator, PyTorch's device, threads and allocator) the fastest successful
measurement is kept; a failure counts only where no run of that configuration
succeeded. The files must come from one
kind of machine: their JAX devices and CPU are checked to agree.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from benchmarks.run import allocator_of, jax_label, output_agreement, summarize


def _key(r: dict[str, Any]) -> tuple:
    if r["framework"] == "torch":
        where = (r.get("device"), r.get("threads"), allocator_of(r))
    else:
        where = (jax_label(r),)
    return (r["framework"], r["mode"], r["batch"], r["dtype"], *where)


def merge(reports: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Best result per configuration over ``reports``, and their dtypes in run order."""
    machines = {(tuple(m["machine"]["jax_devices"]), m["machine"].get("cpu")) for m in reports}
    if len(machines) != 1:
        raise ValueError(f"the runs come from different machines: {sorted(machines)}")
    best: dict[tuple, dict[str, Any]] = {}
    dtypes: list[str] = []
    for report in reports:
        for dtype in report["settings"]["dtypes"]:
            if dtype not in dtypes:
                dtypes.append(dtype)
        for r in report["results"]:
            old = best.get(_key(r))
            if old is None or "error" in old or (
                "error" not in r and r["clips_per_s"] > old["clips_per_s"]
            ):
                best[_key(r)] = r
    return list(best.values()), dtypes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="JSON files written by benchmarks.run --json")
    parser.add_argument("--json", help="write the merged results to this file")
    args = parser.parse_args(argv)
    reports = []
    for path in args.runs:
        with open(path) as f:
            reports.append(json.load(f))
    results, dtypes = merge(reports)
    table, _ = summarize(results, dtypes)
    machine = reports[0]["machine"]
    print(f"{', '.join(machine['jax_devices'])}; jax {machine['jax']}, torch {machine['torch']}")
    print("Throughput in clips/s (best over the runs); speedup = JAX / best PyTorch in the "
          "same dtype and allocator; GB: device peak where a GPU ran, else peak RSS")
    print(table)
    agreement = output_agreement(results)
    if agreement is not None:
        print(f"eval logits, JAX fp32 vs PyTorch fp32: max relative difference {agreement:.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "runs": args.runs, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
