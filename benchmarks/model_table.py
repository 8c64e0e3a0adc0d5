"""Prints every model variant's parameters and GMACs next to the paper's values.

Parameters are the trainable ones (what the paper's PyTorch counts report;
Keras' ``count_params()`` adds the BN moving statistics, shown in the last
column). GMACs are multiply-accumulates of the convolutions and dense layers
for one 256x192 image, counted by :func:`keras_dpn.analysis.count_macs`.

Usage::

    python benchmarks/model_table.py                       # prints the table
    python benchmarks/model_table.py --markdown docs/model_table.md
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

# Paper values (M params, GMACs); None where the paper gives none.
# (label, constructor name, kwargs, paper params, paper GMACs, source)
ROWS = [
    ("DPN1_32", "DPN1_32", {}, None, None, ""),
    ("DPN2_32", "DPN2_32", {}, None, None, ""),
    ("DPN3_32", "DPN3_32", {}, None, None, ""),
    ("DPN4_32", "DPN4_32", {}, 0.7, 1.1, "Table II"),
    ("DPN1_64", "DPN1_64", {}, None, 2.1, "Table IV"),
    ("DPN2_64", "DPN2_64", {}, None, 2.4, "Table IV"),
    ("DPN3_64", "DPN3_64", {}, None, 2.7, "Table IV"),
    ("DPN4_64", "DPN4_64", {}, 3.3, 3.0, "Table II/IV"),
    ("DPN1_64 high", "DPN1_64", {"resolution": "high"}, None, 6.0, "Table IV"),
    ("DPN2_64 high", "DPN2_64", {"resolution": "high"}, None, 7.2, "Table IV"),
    ("DPN3_64 high", "DPN3_64", {"resolution": "high"}, None, 8.4, "Table IV"),
    ("DPN4_64 high", "DPN4_64", {"resolution": "high"}, None, 9.6, "Table IV"),
    ("HRNetW32", "HRNetW32", {}, 28.5, 7.1, "Table VI"),
    ("DPN2_HRNet", "DPN2_HRNet", {}, 29.5, 7.8, "Table VI"),
]


def _deviation(measured, paper):
    if paper is None:
        return ""
    return f"{100.0 * (measured - paper) / paper:+.1f}%"


def _fmt(value, digits):
    return "" if value is None else f"{value:.{digits}f}"


def measure(rows=ROWS, input_shape=(256, 192, 3), progress=True):
    """Returns one dict per row with the measured and the paper's numbers."""
    import keras

    from keras_dpn.analysis import count_macs
    from keras_dpn.models import MODELS

    results = []
    bar = keras.utils.Progbar(len(rows), unit_name="model") if progress else None
    for label, ctor, kwargs, paper_params, paper_gmacs, source in rows:
        model = MODELS[ctor](input_shape=input_shape, **kwargs)
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
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    rows = [r for r in ROWS if not args.only or r[0] in args.only]
    start = time.time()
    table = to_markdown(measure(rows))
    print()
    print("Input 256x192x3, 17 keypoints. Params: trainable. GMACs: conv + dense "
          "multiply-accumulates.")
    print(table)
    print(f"\n({len(rows)} models measured in {time.time() - start:.0f} s)")
    if args.markdown:
        from keras_dpn.io_utils import atomic_file

        with atomic_file(args.markdown, "w") as f:
            f.write(table + "\n")
        print(f"Wrote {args.markdown}")


if __name__ == "__main__":
    main()
