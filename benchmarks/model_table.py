"""Prints every model variant's parameters and GMACs next to the paper's values.

Parameters are the trainable ones (what the paper's PyTorch counts report;
Keras' ``count_params()`` adds the BN moving statistics, shown in the last
column). GMACs are multiply-accumulates of the convolutions and dense layers
for one 256x192 image, counted by :func:`keras_dpn.models.analysis.count_macs`.

Usage::

    python benchmarks/model_table.py                       # prints the table
    python benchmarks/model_table.py --markdown docs/model_table.md
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402



def rows_from_registry():
    """``(label, name, kwargs, paper params, paper GMACs, source)`` per registered
    variant, plus a ``high`` row where the paper measures ``resolution="high"``
    (the paper's figures live in the registry, :mod:`keras_dpn.models.registry`)."""
    from keras_dpn.models import MODELS, model_info
    rows, high = [], []
    for name in MODELS:
        info = model_info(name)
        rows.append((name, name, {}, info.paper_params, info.paper_gmacs, info.source))
        if info.paper_gmacs_high is not None:
            high.append((f"{name} high", name, {"resolution": "high"}, None,
                         info.paper_gmacs_high, info.source))
    # The high-resolution rows after the medium DPNs, before the HRNets.
    split = max(i for i, r in enumerate(rows) if r[0].startswith("DPN") and "_64" in r[0]) + 1
    return rows[:split] + high + rows[split:]


def _deviation(measured, paper):
    if paper is None:
        return ""
    return f"{100.0 * (measured - paper) / paper:+.1f}%"


def _fmt(value, digits):
    return "" if value is None else f"{value:.{digits}f}"


def measure(rows=None, input_shape=(256, 192, 3), progress=True):
    """Returns one dict per row with the measured and the paper's numbers."""
    import keras

    from keras_dpn.models.analysis import count_macs
    from keras_dpn.models import get_model

    rows = rows_from_registry() if rows is None else rows
    results = []
    bar = keras.utils.Progbar(len(rows), unit_name="model") if progress else None
    for label, ctor, kwargs, paper_params, paper_gmacs, source in rows:
        model = get_model(ctor, input_shape=input_shape, **kwargs)
        trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
        results.append(dict(
            label=label, resolution=kwargs.get("resolution", "medium"),
            params=trainable / 1e6, total_params=model.count_params(),
            gmacs=count_macs(model) / 1e9, paper_params=paper_params,
            paper_gmacs=paper_gmacs, source=source))
        del model
        keras.backend.clear_session()
        if bar is not None:
            bar.add(1)
    return results


def to_markdown(results):
    lines = [
        "| variant | DPMs at | params (M) | paper | dev. | GMACs | paper | dev. | "
        "count_params() |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        at = "1/4 (64x48)" if r["resolution"] == "high" else "1/8 (32x24)"
        if r["label"] == "HRNetW32":
            at = "-"
        lines.append(
            f"| {r['label']} | {at} | {r['params']:.2f} | {_fmt(r['paper_params'], 1)} | "
            f"{_deviation(r['params'], r['paper_params'])} | {r['gmacs']:.2f} | "
            f"{_fmt(r['paper_gmacs'], 1)} | {_deviation(r['gmacs'], r['paper_gmacs'])} | "
            f"{r['total_params']:,} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", metavar="PATH",
                        help="also write the table to this markdown file")
    parser.add_argument("--only", nargs="*", help="labels of the rows to measure")
    args = parser.parse_args(argv)
    rows = [r for r in rows_from_registry() if not args.only or r[0] in args.only]
    start = time.time()
    table = to_markdown(measure(rows))
    print()
    print("Input 256x192x3, 17 keypoints. Params: trainable. GMACs: conv + dense "
          "multiply-accumulates.")
    print(table)
    print(f"\n({len(rows)} models measured in {time.time() - start:.0f} s)")
    if args.markdown:
        from keras_dpn.core.io_utils import atomic_file

        with atomic_file(args.markdown, "w") as f:
            f.write(table + "\n")
        print(f"Wrote {args.markdown}")


if __name__ == "__main__":
    main()
