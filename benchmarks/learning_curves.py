"""Proof that the training path users run learns: the recipe memorizes the COCO sample.

Runs ``recipes/train_coco.py`` itself (in a subprocess: TFRecord shards ->
``keras_dpn.data.build_dataset`` -> ``model.fit`` through
``keras_dpn.training.trainer.Trainer`` -> ``COCOEvaluationCallback`` every epoch ->
best weights) on the bundled sample, once per augmentation setting (none,
horizontal flips only, the HRNet reference), and draws the per-epoch COCO AP
and loss of all runs into one figure. Training
and evaluation use the same 124 people with ground-truth boxes: a
coordinate mistake anywhere between the annotation and the AP (shard
builder, crop affine, Gaussian targets, decoding, the flip test, OKS
evaluation) caps the AP far below 0.8 however long the model trains, while a
correct path memorizes the sample.

The settings are those of the numpy-crop run this proof replaced (DPN4_32 at
256x192, batch 4, Adam 1e-3 with x0.1 at epochs 55 and 65,
``mixed_bfloat16``, heatmap head N(0, 0.001), seed 0). That run's script is
gone, so its figures are not drawn: everything in the figure and the JSON is
measured by this script. With ``--augment none`` the recipe
evaluates without the flip test (its default for a model that never saw a
mirrored person); the other two flip, so their runs are flip-tested.

Usage::

    python benchmarks/learning_curves.py                  # the three runs, then the figure
    python benchmarks/learning_curves.py --augment none   # one run
    python benchmarks/learning_curves.py --plot-only      # redraw from finished runs

Every run can be resumed after a kill (the same command: the recipe's
``--resume``). Writes ``OUTPUT/<augment>/`` (the recipe's run folders),
``OUTPUT/learning_curves.json`` and the figure (default
``docs/learning_curves.png``). Exit status 0 when the run without
augmentation reached ``--target-ap``.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "train_coco.py")

PROOF_ARGS = ["--input-size", "256", "192", "--batch-size", "4", "--lr", "1e-3",
              "--lr-epochs", "55", "65", "--mixed-precision", "--seed", "0",
              "--export-formats", "none"]


def run_recipe(augment, epochs, output, shards_dir, extra=(), log=None):
    """Runs the recipe for one augmentation setting (resuming a killed run); returns its folder."""
    folder = os.path.join(output, augment)
    argv = [sys.executable, RECIPE, "--augment", augment, "--epochs", str(epochs),
            "--output", folder, "--shards-dir", shards_dir, "--verbose", "2",
            *PROOF_ARGS, *extra]
    if os.path.exists(os.path.join(folder, "checkpoints", "state.json")):
        argv.append("--resume")
    print(f"[curves] {augment}: {' '.join(argv[1:])}", flush=True)
    start = time.time()
    with open(log or os.devnull, "a") as f:
        proc = subprocess.run(argv, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"The recipe failed (exit status {proc.returncode}); see {log}")
    print(f"[curves] {augment}: done in {(time.time() - start) / 60:.1f} min", flush=True)
    return folder


def read_history(folder):
    """Per-epoch rows of a recipe run: epoch (1-based), loss, val_AP."""
    with open(os.path.join(folder, "history.csv"), newline="") as f:
        rows = list(csv.DictReader(f))

    def value(row, key):
        return float(row[key]) if row.get(key) not in (None, "") else None

    shift = 1 if rows and int(float(rows[0]["epoch"])) == 0 else 0  # keras-dpn 0.1: from 0
    return [{"epoch": int(float(r["epoch"])) + shift, "loss": value(r, "loss"),
             "val_AP": value(r, "val_AP")} for r in rows]


def draw(curves, path):
    """AP and loss per epoch of every run in one figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_dpn.core import io_utils

    colors = {"none": "tab:red", "flip": "tab:orange", "reference": "tab:blue"}
    fig, (ax_ap, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    for augment, rows in curves.items():
        flip = "" if augment == "none" else ", flip test"
        label = f"recipe, --augment {augment}{flip}"
        epochs = [r["epoch"] for r in rows if r["val_AP"] is not None]
        ax_ap.plot(epochs, [r["val_AP"] for r in rows if r["val_AP"] is not None], "-",
                   color=colors.get(augment), label=label)
        ax_loss.plot([r["epoch"] for r in rows], [r["loss"] for r in rows], "-",
                     color=colors.get(augment), label=label)
    ax_ap.axhline(0.8, color="grey", linestyle=":", linewidth=1)
    ax_ap.set_xlabel("epoch (31 steps of batch 4)")
    ax_ap.set_ylabel("COCO AP on the training images")
    ax_ap.set_ylim(0, 1)
    ax_ap.legend(fontsize=8, loc="upper left")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss (JointsMSE)")
    ax_loss.set_yscale("log")
    ax_loss.legend(fontsize=8)
    fig.suptitle("DPN4_32 256x192 memorizing the 124 people of the COCO sample through "
                 "recipes/train_coco.py", fontsize=10)
    fig.tight_layout()
    with io_utils.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--augment", nargs="+", default=["none", "flip", "reference"],
                        choices=("none", "flip", "reference"))
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--output", default="/tmp/keras_dpn_learning_curves")
    parser.add_argument("--shards-dir", help="where the sample shards are built "
                        "(default: OUTPUT/shards)")
    parser.add_argument("--figure", default=os.path.join(REPO, "docs", "learning_curves.png"))
    parser.add_argument("--target-ap", type=float, default=0.8)
    parser.add_argument("--plot-only", action="store_true",
                        help="draw the figure from the runs already in OUTPUT")
    args = parser.parse_args(argv)

    output = os.path.abspath(args.output)
    os.makedirs(output, exist_ok=True)
    shards_dir = os.path.abspath(args.shards_dir or os.path.join(output, "shards"))
    curves = {}
    for augment in args.augment:
        folder = os.path.join(output, augment)
        if not args.plot_only:
            run_recipe(augment, args.epochs, output, shards_dir,
                       log=os.path.join(output, f"{augment}.log"))
        if os.path.exists(os.path.join(folder, "history.csv")):
            curves[augment] = read_history(folder)
            best = max((r["val_AP"] or 0.0 for r in curves[augment]), default=0.0)
            print(f"[curves] {augment}: {len(curves[augment])} epochs, best AP {best:.4f}")
    if not curves:
        print(f"[curves] no finished run in {output}", file=sys.stderr)
        return 2
    from keras_dpn.core.io_utils import atomic_file
    with atomic_file(os.path.join(output, "learning_curves.json"), "w") as f:
        json.dump({"settings": PROOF_ARGS, "runs": curves}, f, indent=1)
    print(f"[curves] figure: {draw(curves, args.figure)}")
    best_none = max((r["val_AP"] or 0.0 for r in curves.get("none", [])), default=None)
    if best_none is None:
        return 0
    reached = best_none >= args.target_ap
    print(f"[curves] {'PASS' if reached else 'FAIL'}: --augment none best AP {best_none:.4f} "
          f"(target {args.target_ap})")
    return 0 if reached else 1


if __name__ == "__main__":
    sys.exit(main())
