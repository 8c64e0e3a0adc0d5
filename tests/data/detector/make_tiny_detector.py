"""Regenerates the two tiny "detectors" in this folder (TensorFlow + tf2onnx).

They exist to test the plumbing of ``keras_dpn.inference.detectors.ModelDetector``, not
to find people: each looks at a 64x64 image through 49 fixed windows (16x16
model pixels, stride 8, a 7x7 grid) and scores a window by how *red* it is
(class 0, "person") and how *green* it is (class 1). A red rectangle that
covers one window exactly scores 1 there, 0.5 in the four windows half
overlapping it and 0.25 diagonally, so the threshold, the class filter and
NMS all have something to do. The two files describe the same boxes in two
output layouts:

``tiny_detector.onnx``: float32 NHWC input in [0, 1];
    output 0 ``boxes`` (1, 49, 4) normalized xyxy, output 1 ``scores``
    (1, 49, 2) class scores (column 0 = person).
``tiny_detector.tflite``: uint8 NHWC input (0-255);
    outputs ``boxes`` (1, 49, 4) in model-input pixels as cx, cy, w, h,
    ``scores`` (1, 49) best class score, ``classes`` (1, 49) best class id.
    The output order of a TFLite file is its converter's: read it with
    ``keras_dpn.inference.detectors.describe_model``.

Usage: ``python tests/data/detector/make_tiny_detector.py [OUT_DIR]`` (a few
seconds; OUT_DIR defaults to this folder).
"""

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE, WINDOW, STRIDE = 64, 16, 8


def window_boxes():
    """(49, 4) xyxy windows in model-input pixels, row-major over the 7x7 grid."""
    starts = np.arange(0, SIZE - WINDOW + 1, STRIDE, dtype=np.float32)
    y0, x0 = np.meshgrid(starts, starts, indexing="ij")
    x0, y0 = x0.reshape(-1), y0.reshape(-1)
    return np.stack([x0, y0, x0 + WINDOW, y0 + WINDOW], axis=1)


def _class_scores(tf, image01):
    r, g, b = tf.unstack(image01, axis=-1)
    redness = r * (1 - g) * (1 - b)
    greenness = g * (1 - r) * (1 - b)
    maps = tf.stack([redness, greenness], axis=-1)
    pooled = tf.nn.avg_pool2d(maps, WINDOW, STRIDE, "VALID")  # (1, 7, 7, 2)
    return tf.reshape(pooled, [1, -1, 2])


def main(out_dir=HERE):
    import tempfile

    import tensorflow as tf
    import tf2onnx

    xyxy = window_boxes()
    cxcywh = np.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2,
                       xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]], axis=1)

    @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32, name="image")])
    def onnx_layout(image):
        boxes = tf.constant(xyxy[None] / SIZE, tf.float32) + 0.0 * tf.reduce_mean(image)
        return {"boxes": tf.identity(boxes, name="boxes"),
                "scores": tf.identity(_class_scores(tf, image), name="scores")}

    onnx_path = os.path.join(out_dir, "tiny_detector.onnx")
    tf2onnx.convert.from_function(onnx_layout, input_signature=onnx_layout.input_signature,
                                  opset=17, output_path=onnx_path)

    class Layout(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.uint8, name="image")])
        def serve(self, image):
            scores = _class_scores(tf, tf.cast(image, tf.float32) / 255.0)
            boxes = tf.constant(cxcywh[None], tf.float32) + 0.0 * tf.reduce_mean(scores)
            return {"boxes": boxes, "scores": tf.reduce_max(scores, axis=-1),
                    "classes": tf.cast(tf.argmax(scores, axis=-1), tf.float32)}

    # Converting from a SavedModel (not from concrete functions, see DEVELOPERS.md).
    module = Layout()
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
        tflite = tf.lite.TFLiteConverter.from_saved_model(tmp).convert()
    with open(os.path.join(out_dir, "tiny_detector.tflite"), "wb") as f:
        f.write(tflite)
    print("wrote", onnx_path, "and tiny_detector.tflite")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
