"""Keras .h5 -> digitpi export folder, compared against Keras itself on real MNIST test images.

Keras 3 runs on its PyTorch backend here (no TensorFlow): the reference is the real Keras layer
code, and the files are the legacy HDF5 that the course's `model.save('MNIST CNN.h5')` writes.
"""

from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np
import pytest

os.environ["KERAS_BACKEND"] = "torch"  # must be set before keras is imported
keras = pytest.importorskip("keras")
layers = keras.layers

from digitpi import export, runtime  # noqa: E402
from digitpi.cli import main  # noqa: E402
from digitpi.keras_import import KerasImportError, import_keras  # noqa: E402

PARITY_IMAGES = 1000  # real test images compared image by image
TOLERANCE = 1e-4


# ---------------------------------------------------------------- the course's three Keras models


def course_mlp():
    return keras.Sequential([
        keras.Input((28, 28, 1)), layers.Flatten(),
        layers.Dense(512, activation="relu"), layers.Dropout(0.2),
        layers.Dense(512, activation="relu"), layers.Dropout(0.2),
        layers.Dense(10, activation="softmax"),
    ])


def course_baseline_cnn():
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
        layers.Flatten(),  # sees 13x13x32: the flatten order matters
        layers.Dense(100, activation="relu"), layers.Dense(10, activation="softmax"),
    ])


def course_cnn():
    model = keras.Sequential([keras.Input((28, 28, 1))])
    for filters in (16, 32, 64, 128):
        model.add(layers.Conv2D(filters, (2, 2), padding="same", activation="relu"))  # even kernel: pad right/bottom
        model.add(layers.MaxPooling2D(2))
    model.add(layers.Flatten())
    for units in (784, 392, 128):
        model.add(layers.Dense(units, activation="relu"))
    model.add(layers.Dense(10, activation="softmax"))
    return model


def strided_bn_cnn():
    """Beyond the course: stride 2 with lopsided 'same' padding, BatchNorm, Activation layers, logits out."""
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(8, 3, strides=2, padding="same"), layers.BatchNormalization(), layers.Activation("relu"),
        layers.Conv2D(12, 4, padding="same", use_bias=False), layers.ReLU(), layers.MaxPooling2D(2, strides=1),
        layers.Flatten(), layers.Dropout(0.1), layers.Dense(10),
    ])


COURSE = {  # builder, parameter count of the course's model.summary(), matching digitpi zoo model
    "mlp": (course_mlp, 669_706, "mlp"),
    "baseline_cnn": (course_baseline_cnn, 542_230, "baseline_cnn"),
    "course_cnn": (course_cnn, 503_762, "course_cnn"),
    "strided_bn_cnn": (strided_bn_cnn, None, None),
}


def randomize_bn(model) -> None:
    """Fresh BatchNorm is the identity; give it statistics so its conversion is actually tested."""
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = (w.shape for w in layer.get_weights())
            layer.set_weights([rng.uniform(0.5, 2, gamma), rng.normal(0, 0.5, beta),
                               rng.normal(0, 0.5, mean), rng.uniform(0.5, 2, var)])


def keras_outputs(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Keras's own output, Keras's logits): the last layer's softmax switched off for the second."""
    out = np.asarray(model.predict(x, verbose=0, batch_size=500))
    last = model.layers[-1]
    softmax = last.activation
    last.activation = keras.activations.linear
    logits = np.asarray(model.predict(x, verbose=0, batch_size=500))
    last.activation = softmax
    return out, logits


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def test_images(mnist_test):
    images, labels = mnist_test
    x = images[:PARITY_IMAGES].astype(np.float32) / 255  # what the course feeds Keras
    return x, labels[:PARITY_IMAGES]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each Keras model (random weights, fixed seed) saved as legacy .h5 the way the course does."""
    folder = tmp_path_factory.mktemp("keras")
    models = {}
    for name, (build, _, _) in COURSE.items():
        keras.utils.set_random_seed(0)
        model = build()
        randomize_bn(model)
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        model.save(folder / f"{name}.h5")
        models[name] = model
    return folder, models


def onnx_of(model, folder) -> np.ndarray:
    """The fp32 ONNX file exactly as `export_model` writes it (same deployable copy, same exporter)."""
    path = folder / "model.onnx"
    export.export_onnx(export.deployable(model), path, {})
    return path


@pytest.mark.parametrize("name", COURSE)
def test_onnx_matches_keras_on_real_images(name, saved, test_images, tmp_path):
    folder, models = saved
    build, params, zoo_name = COURSE[name]
    keras_model = models[name]
    if params is not None:
        assert keras_model.count_params() == params  # the course's architecture, not an approximation
    imported = import_keras(folder / f"{name}.h5")
    assert imported.zoo_name == zoo_name
    from digitpi.models import count_params

    # BatchNorm's moving statistics are parameters to Keras, buffers to torch: compare trainable ones
    assert count_params(imported.model) == sum(int(np.prod(w.shape)) for w in keras_model.trainable_weights)

    x, _ = test_images
    keras_out, keras_logits = keras_outputs(keras_model, x[..., None])  # Keras: channels-last (N, 28, 28, 1)
    onnx_logits = export.onnx_logits(onnx_of(imported.model, tmp_path), x[:, None])  # ours: (N, 1, 28, 28)
    assert np.abs(onnx_logits - keras_logits).max() < TOLERANCE
    # what the Pi reports (softmax of the logits) is what Keras's model.predict reports
    expected = keras_out if imported.source["keras_output"].startswith("probabilities") else softmax(keras_out)
    assert np.abs(softmax(onnx_logits) - expected).max() < TOLERANCE
    assert (onnx_logits.argmax(1) == keras_logits.argmax(1)).all()


def fast_cnn_in_keras():
    """digitpi's fast_cnn written in Keras, for the summary's counts: conv (no bias), pool, BN, ReLU per stage."""
    model = keras.Sequential([keras.Input((28, 28, 1))])
    for filters in (16, 32, 64):
        model.add(layers.Conv2D(filters, 3, padding="same", use_bias=False))
        model.add(layers.MaxPooling2D(2))
        model.add(layers.BatchNormalization())
        model.add(layers.ReLU())
    model.add(layers.Flatten())
    model.add(layers.Dense(10))
    return model


@pytest.mark.parametrize("name, build", [("mlp", course_mlp), ("baseline_cnn", course_baseline_cnn),
                                         ("course_cnn", course_cnn), ("fast_cnn", fast_cnn_in_keras)])
def test_summary_counts_as_keras_summary_does(name, build):
    """`digitpi summary`'s three totals are Keras's own for the same network (BatchNorm statistics: non-trainable)."""
    from keras.src.utils.naming import to_snake_case

    from digitpi.models import create_model, format_summary, snake_case, summary

    model = build()
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    text = format_summary(create_model(name), name)
    assert f"Total params: {model.count_params():,}\n" in text
    assert f"Trainable params: {trainable:,}\n" in text
    assert f"Non-trainable params: {model.count_params() - trainable:,}\n" in text
    for row in summary(create_model(name)):  # layer names follow Keras's naming rule
        assert snake_case(row.kind) == to_snake_case(row.kind)


def keras2_copy(src, dst, old_list_layout: bool) -> None:
    """Rewrite a Keras 3 .h5 the way Keras 2 / tf.keras wrote it: no InputLayer but a
    batch_input_shape on the first layer, weights named 'layer/kernel:0', attributes as bytes;
    with `old_list_layout`, Keras <= 2.2's config that is a bare list of layers."""
    with h5py.File(src, "r") as f:
        config = json.loads(f.attrs["model_config"])
        layer_list = [layer for layer in config["config"]["layers"] if layer["class_name"] != "InputLayer"]
        layer_list[0]["config"]["batch_input_shape"] = [None, 28, 28, 1]
        body = layer_list if old_list_layout else {"name": "sequential", "layers": layer_list}
        with h5py.File(dst, "w") as out:
            out.attrs["keras_version"] = b"2.13.1"
            out.attrs["backend"] = b"tensorflow"
            out.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": body}).encode()
            group = out.create_group("model_weights")
            for layer in layer_list:
                name = layer["config"]["name"]
                source, target = f["model_weights"][name], group.create_group(name)
                names = []
                for weight in source.attrs["weight_names"]:
                    short = f"{name}/{weight.split('/')[-1]}:0"
                    target.create_dataset(short, data=source[weight][()])
                    names.append(short.encode())
                target.attrs["weight_names"] = np.array(names, dtype="S")


@pytest.mark.parametrize("old_list_layout", [False, True], ids=["keras2", "keras2.0-list"])
def test_keras2_file_layout_gives_the_same_model(old_list_layout, saved, test_images, tmp_path):
    folder, models = saved
    keras2 = tmp_path / "keras2.h5"
    keras2_copy(folder / "baseline_cnn.h5", keras2, old_list_layout)
    imported = import_keras(keras2)
    assert imported.input_shape == (28, 28, 1)
    assert imported.source["keras_version"] == "2.13.1"
    x, _ = test_images
    _, keras_logits = keras_outputs(models["baseline_cnn"], x[:200, ..., None])
    import torch

    with torch.no_grad():
        ours = imported.model(torch.from_numpy(x[:200, None])).numpy()
    assert np.abs(ours - keras_logits).max() < TOLERANCE


def test_an_untrained_model_is_exported_with_a_warning(saved, mnist_dir, tmp_path, capsys):
    """The course's MLP saved before `model.fit` reads ~10 % of digits: the folder is written, and the user told."""
    folder, _ = saved
    out = tmp_path / "mlp-export"
    assert main(["import-keras", str(folder / "mlp.h5"), "--out", str(out), "--data-dir", str(mnist_dir)]) == 0
    accuracy = runtime.read_card(out)["test_accuracy"]["fp32"]
    err = capsys.readouterr().err
    assert accuracy < 0.3 and err.count("\n") == 1
    assert err.startswith(f"digitpi: warning: the imported model reads only {100 * accuracy:.1f} % of the 10,000")
    assert "saved before model.fit?" in err


@pytest.mark.slow
def test_trained_keras_model_keeps_its_accuracy_on_the_pi(mnist_dir, mnist_test, tmp_path, capsys):
    """Train a small CNN in Keras on real digits, import it with the CLI, read the test set on the
    Pi runtime: same accuracy as Keras's own model.evaluate, image for image."""
    from digitpi import data

    train_x, train_y = data.load_split("mnist", "train", mnist_dir)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(8, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
        layers.Flatten(),  # 13x13x8
        layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train_x[:9600, ..., None] / 255, train_y[:9600], batch_size=32, epochs=1, verbose=0)  # 300 steps
    h5 = tmp_path / "MNIST CNN.h5"
    model.save(h5)

    images, labels = mnist_test
    _, keras_accuracy = model.evaluate(images[..., None] / 255, labels, batch_size=1000, verbose=0)
    keras_pred = np.asarray(model.predict(images[..., None] / 255, batch_size=1000, verbose=0)).argmax(1)
    assert keras_accuracy > 0.85  # it learned: a random model is at 10 %

    assert main(["import-keras", str(h5), "--data-dir", str(mnist_dir)]) == 0
    out = tmp_path / "MNIST CNN-export"
    printed, warned = capsys.readouterr()
    assert "exported keras:sequential" in printed and str(out) in printed
    assert ("warning" in warned) == (keras_accuracy < 0.9)  # trained: no word about an untrained model

    card = runtime.read_card(out)
    assert card["source"]["format"] == "keras-h5" and card["source"]["file"] == h5.name
    assert card["fp32_max_abs_logit_diff_vs_torch"] < TOLERANCE
    for precision in ("fp32", "int8"):
        pred = runtime.Classifier.load(out, precision=precision).predict(images).labels
        if precision == "fp32":
            assert (pred == keras_pred).mean() > 0.9998  # at most 2 of 10,000 ties may break differently
            assert abs(card["test_accuracy"]["fp32"] - keras_accuracy) < 2e-4
        else:
            assert (pred == labels).mean() > keras_accuracy - 0.01  # int8 stays within a point

    # `digitpi predict` on the folder, from a PNG file, reads what Keras reads
    from PIL import Image

    sure = int(np.flatnonzero(keras_pred == labels)[0])  # the first test digit Keras reads right
    Image.fromarray(images[sure]).save(tmp_path / "digit.png")
    assert main(["predict", str(tmp_path / "digit.png"), "--model", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["digit"] == keras_pred[sure] == labels[sure]


# ---------------------------------------------------------------- what the user is told


def save(model, path):
    model.save(path)
    return path


def run_cli(args, capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def test_unsupported_layer_is_named_in_one_line_and_nothing_is_written(tmp_path, capsys):
    h5 = save(keras.Sequential([keras.Input((28, 28, 1)), layers.Conv2D(4, 3),
                                layers.AveragePooling2D(2, name="smooth"), layers.Flatten(),
                                layers.Dense(10)]), tmp_path / "avg.h5")
    code, err = run_cli(["import-keras", str(h5), "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert err.startswith("digitpi: error: ") and err.count("\n") == 1
    assert "'smooth'" in err and "AveragePooling2D" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(KerasImportError, match="AveragePooling2D"):
        import_keras(h5)


@pytest.mark.parametrize("build, message", [
    (lambda: keras.Sequential([keras.Input((28, 28, 1)), layers.Flatten(), layers.Dense(32, activation="softmax"),
                               layers.Dense(10)]), "activation 'softmax' is not supported except as the last"),
    (lambda: keras.Sequential([keras.Input((28, 28, 1)), layers.Flatten(), layers.Dense(32, activation="tanh"),
                               layers.Dense(10)]), "activation 'tanh'"),
    (lambda: keras.Sequential([keras.Input((32, 32, 3)), layers.Flatten(), layers.Dense(10)]),
     r"input shape \(32, 32, 3\) is not a 28x28 grey image"),
    (lambda: keras.Sequential([keras.Input((28, 28, 1)), layers.Flatten(), layers.Dense(5)]),
     r"outputs \(5,\), expected \(10,\)"),
])
def test_models_that_cannot_run_on_the_pi_are_refused(build, message, tmp_path):
    with pytest.raises(KerasImportError, match=message):
        import_keras(save(build(), tmp_path / "m.h5"))


def test_weights_that_do_not_fit_the_config_are_refused(saved, tmp_path):
    folder, _ = saved
    broken = tmp_path / "broken.h5"
    shutil.copy(folder / "mlp.h5", broken)
    with h5py.File(broken, "r+") as f:
        layer = next(g for g in f["model_weights"].values() if len(g.attrs.get("weight_names", [])))
        kernel_name = layer.attrs["weight_names"][0]
        kernel = layer[kernel_name][()]
        del layer[kernel_name]
        layer[kernel_name] = kernel[:-1]  # one input row short, as a truncated or edited file would be
    with pytest.raises(KerasImportError, match=r"layer '\w+' \(Dense\): unexpected config or weights"):
        import_keras(broken)


def test_files_that_are_not_keras_h5_are_refused(tmp_path, capsys):
    not_h5 = tmp_path / "model.keras"
    not_h5.write_bytes(b"PK\x03\x04 a zip, not HDF5")
    weights_only = tmp_path / "weights.h5"
    with h5py.File(weights_only, "w") as f:
        f.create_group("dense")
    for path, message in ((tmp_path / "missing.h5", "no such file"), (not_h5, "not an HDF5 file"),
                          (weights_only, "no model_config")):
        code, err = run_cli(["import-keras", str(path)], capsys)
        assert code == 2 and message in err and err.count("\n") == 1


def test_nan_weights_are_refused_and_nothing_is_written(tmp_path, capsys, mnist_dir):
    model = course_mlp()
    kernel, bias = model.layers[-1].get_weights()
    kernel[0, 0] = np.nan  # a model that diverged in training
    model.layers[-1].set_weights([kernel, bias])
    h5 = save(model, tmp_path / "diverged.h5")
    code, err = run_cli(["import-keras", str(h5), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.count("\n") == 1 and "NaN or infinite" in err
    assert not (tmp_path / "out").exists()
