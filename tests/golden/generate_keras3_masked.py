"""Write the Keras 3 masked batch-norm fixtures in tests/golden/keras3 (needs TensorFlow with
its bundled Keras 3; run without TF_USE_LEGACY_KERAS):

    python tests/golden/generate_keras3_masked.py

Each case runs ``keras.layers.BatchNormalization`` for two training steps with a mask and
records the outputs, the input gradient of ``sum(y * dy)`` and the moving statistics. (Keras 3
has no fused-path variance correction: compare with ``fused=False``.)
"""
import pathlib

import numpy as np

CASES = {
    "ntc_mask_nt": ((6, 5, 4), -1, (6, 5)),
    "nhwc_mask_nhw": ((3, 4, 4, 5), -1, (3, 4, 4)),
    # Keras 3 takes masks of rank ndim - 1 and puts the feature axis last, so it defines masks
    # for channels-last inputs only
}


def main():
    import keras
    import tensorflow as tf
    out = pathlib.Path(__file__).parent / "keras3"
    out.mkdir(exist_ok=True)
    for seed, (name, (shape, axis, mask_shape)) in enumerate(CASES.items()):
        rng = np.random.default_rng(seed)
        layer = keras.layers.BatchNormalization(axis=axis, momentum=0.5)
        record = {"axis": np.array(axis), "keras_version": np.array(keras.__version__)}
        for step in range(2):
            x = rng.normal(3.0, 2.0, size=shape).astype(np.float32)
            dy = rng.normal(size=shape).astype(np.float32)
            mask = rng.random(mask_shape) < 0.6
            xt = tf.constant(x)
            with tf.GradientTape() as tape:
                tape.watch(xt)
                y = layer(xt, training=True, mask=tf.constant(mask))
                loss = tf.reduce_sum(y * dy)
            record.update({f"x{step}": x, f"dy{step}": dy, f"mask{step}": mask,
                           f"y{step}": y.numpy(), f"dx{step}": tape.gradient(loss, xt).numpy(),
                           f"moving_mean{step}": np.asarray(layer.moving_mean),
                           f"moving_variance{step}": np.asarray(layer.moving_variance)})
        np.savez(out / f"{name}.npz", **record)
        print("wrote", name)


if __name__ == "__main__":
    main()
