"""Draws the paper's Fig. 2 idea: what one output position sees.

Four stacks of three 3x3 convolutions, measured by gradient
(:func:`keras_dpn.models.analysis.receptive_field`):

* normal (dilation 1, 1, 1): 7x7, dense, full resolution;
* constant dilation (2, 2, 2): 13x13 but with holes (gridding);
* pyramid (4, 2, 1), the DPM's schedule: 15x15, dense, full resolution;
* strided (stride 2, 2, 2): 15x15, dense, but the output is 8x smaller.

A fifth panel shows one real Dilation Pyramid Module (N=6, k=3): 127x127.

Usage::

    python benchmarks/receptive_field_figure.py            # docs/receptive_field.png
    python benchmarks/receptive_field_figure.py --out fig.png
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def conv_stack(dilations=(1, 1, 1), strides=(1, 1, 1), input_size=32):
    """Three linear 3x3 convs on a one-channel input."""
    import keras

    layers = [keras.Input((input_size, input_size, 1))]
    for i, (d, s) in enumerate(zip(dilations, strides)):
        layers.append(keras.layers.Conv2D(1, 3, strides=s, dilation_rate=d, padding="same",
                                          use_bias=False, name=f"conv{i + 1}"))
    return keras.Sequential(layers)


PANELS = (
    ("normal\ndilation 1,1,1", dict(dilations=(1, 1, 1)), None),
    ("constant dilation\n2,2,2", dict(dilations=(2, 2, 2)), None),
    ("pyramid\ndilation 4,2,1", dict(dilations=(4, 2, 1)), None),
    # Output (1, 1) of 4x4: its field is centred in the 32x32 input.
    ("strided\nstride 2,2,2", dict(strides=(2, 2, 2)), (1, 1)),
)


def measure_panels(input_size=32):
    from keras_dpn.models.analysis import receptive_field

    out = []
    for title, kwargs, position in PANELS:
        model = conv_stack(input_size=input_size, **kwargs)
        rf = receptive_field(model, (input_size, input_size, 1), position=position)
        out.append((title, rf, int(model.output_shape[1])))
    return out


def measure_dpm(input_size=160):
    from keras_dpn.models.analysis import receptive_field
    from keras_dpn.models.layers import DilationPyramidModule

    # Width 2 (8 channels) keeps it quick: the receptive field ignores width.
    dpm = DilationPyramidModule(2, num_blocks=6)
    return receptive_field(dpm, (input_size, input_size, 8))


def draw(panels, dpm_rf, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from keras_dpn.core.io_utils import atomic_path

    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.2 * (len(panels) + 1), 3.9))
    for ax, (title, rf, out_size) in zip(axes, panels):
        ax.imshow(rf.mask, cmap="Blues", vmin=0, vmax=1.3, interpolation="nearest")
        r, c = rf.input_position
        ax.plot(c, r, "r+", markersize=9)
        holes = "holes" if rf.has_holes else "dense"
        ax.set_title(f"{title}\nRF {rf.extent[0]}x{rf.extent[1]}, {holes}\n"
                     f"output {out_size}x{out_size} of 32x32", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = axes[-1]
    ax.imshow(np.log10(dpm_rf.gradient + 1e-12), cmap="magma", interpolation="nearest")
    ax.set_title(f"one DPM (N=6, k=3)\nRF {dpm_rf.extent[0]}x{dpm_rf.extent[1]}, "
                 f"{'holes' if dpm_rf.has_holes else 'dense'}\nlog10 |gradient|", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.suptitle("Input positions reaching the centre output (measured by gradient)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--out", default=os.path.join(repo, "docs", "receptive_field.png"))
    args = parser.parse_args(argv)
    panels = measure_panels()
    dpm_rf = measure_dpm()
    for title, rf, _ in panels:
        print(f"{title.replace(chr(10), ' '):32s} extent {rf.extent} count {rf.count} "
              f"holes {rf.has_holes}")
    print(f"{'DPM N=6 k=3':32s} extent {dpm_rf.extent} count {dpm_rf.count} "
          f"holes {dpm_rf.has_holes}")
    draw(panels, dpm_rf, args.out)
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
