"""Export tests: every exported variant against the trained torch model on the full real test set."""

from __future__ import annotations

import json
import logging
import platform
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from digitpi import card, export, rundir, runtime
from digitpi.contract import PIXEL_SCALE
from digitpi.exportdir import BACKENDS, CARD, PRECISIONS, VARIANTS


def as_input(images: np.ndarray) -> np.ndarray:
    return images[:, None].astype(np.float32) * np.float32(PIXEL_SCALE)


@pytest.fixture(scope="module")
def torch_logits(fast_run, mnist_test) -> np.ndarray:
    model, _ = rundir.load_checkpoint(fast_run)
    return export.torch_logits(model, as_input(mnist_test[0]))


def test_onnx_fp32_logits_match_torch_on_full_test_set(fast_export, mnist_test, torch_logits):
    fp32 = runtime.Classifier.load(fast_export, precision="fp32", backend="onnxruntime")
    logits = fp32.logits(mnist_test[0])
    assert logits.shape == (10_000, 10)
    assert np.abs(logits - torch_logits).max() < 1e-4


def test_int8_is_small_and_as_accurate_as_fp32(fast_export, mnist_test):
    images, labels = mnist_test
    accuracy = {p: (runtime.Classifier.load(fast_export, precision=p).predict(images).labels == labels).mean()
                for p in ("fp32", "int8")}
    assert abs(accuracy["int8"] - accuracy["fp32"]) <= 0.001  # within 0.1 percentage point
    assert accuracy["int8"] >= 0.99
    assert (fast_export / "model.int8.onnx").stat().st_size <= 50 * 1024
    card = json.loads((fast_export / "model.json").read_text())
    assert card["test_accuracy"]["int8"] == pytest.approx(accuracy["int8"])  # the card reports what runs
    assert card["test_accuracy"]["fp32"] == pytest.approx(accuracy["fp32"])


def test_the_default_models_int8_reads_as_fp32(exported_dir):
    """The card's accuracies are measured here, through onnxruntime's fused int8 kernels. With 8-bit
    weights, on an x86 CPU without VNNI, those overflowed: 99.24 % in int8 against 99.57 % in fp32."""
    accuracy = json.loads((exported_dir / "model.json").read_text())["test_accuracy"]
    assert abs(accuracy["int8"] - accuracy["fp32"]) <= 0.001


def test_an_8bit_int8_export_runs_fp32_where_it_misreads(fast_run, fast_export, mnist_test, tmp_path, monkeypatch,
                                                          caplog):
    """An export made before weights were kept to 7 bits still loads. On an x86 CPU without VNNI, where its
    int8 sums overflow, the runtime's default runs its fp32 file instead and says so in one line; int8 asked
    for runs int8, with a line saying what to do. A 7-bit export, fp32 asked for, VNNI or ARM: no line."""
    model, run_cfg = export.load_run(fast_run)
    old = tmp_path / "8-bit"
    export.export_model(model, run_cfg.model, run_cfg.model_args, old, export.ExportConfig(reduce_range=False))
    assert json.loads((old / CARD).read_text())["quantization"]["weights"] == "int8 per channel"
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(runtime, "CPUINFO", cpuinfo)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")

    def load(flags: str, folder, **options) -> tuple[runtime.Classifier, list[str]]:
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="digitpi.runtime"):
            classifier = runtime.Classifier.load(folder, **options)
        return classifier, [record.getMessage() for record in caplog.records]

    def runs(flags: str, folder, **options) -> tuple[str, int]:
        classifier, lines = load(flags, folder, **options)
        return classifier.precision, len(lines)

    avx2 = "fpu sse2 avx avx2 fma"  # this machine's CPU, and CI's
    default, [line] = load(avx2, old)
    assert default.precision == "fp32" and default.backend_name == "onnxruntime"
    assert "8-bit weights" in line and "x86 without VNNI" in line and "reading digits with fp32 weights" in line
    images, labels = mnist_test
    card_accuracy = json.loads((old / CARD).read_text())["test_accuracy"]
    assert (default.predict(images).labels == labels).mean() == pytest.approx(card_accuracy["fp32"])
    asked, [line] = load(avx2, old, precision="int8")
    assert asked.precision == "int8" and line.endswith("use --precision fp32")
    assert runs(avx2, old, precision="fp32") == ("fp32", 0)
    assert runs(avx2, old, backend="numpy") == ("fp32", 0)
    assert runs(avx2, fast_export) == ("int8", 0)
    assert runs(f"{avx2} avx512f avx512_vnni", old) == ("int8", 0)
    assert runs(f"{avx2} avx_vnni", old) == ("int8", 0)
    written = json.loads((old / CARD).read_text())
    for quantization in (None, ["int8"], 7):  # the card's free words as another tool may write them: no 7-bit mark
        (old / CARD).write_text(json.dumps(card.seal({**written, "quantization": quantization})))
        assert runs(avx2, old) == ("fp32", 1)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert runs(avx2, old) == ("int8", 0)


def test_numpy_backend_predicts_the_labels_of_onnx_fp32(fast_export, mnist_test):
    images = mnist_test[0]
    numpy_run = runtime.Classifier.load(fast_export, backend="numpy")
    onnx_run = runtime.Classifier.load(fast_export, precision="fp32", backend="onnxruntime")
    assert numpy_run.precision == "fp32" and numpy_run.backend_name == "numpy"
    np.testing.assert_array_equal(numpy_run.predict(images).labels, onnx_run.predict(images).labels)
    np.testing.assert_allclose(numpy_run.logits(images[:500]), onnx_run.logits(images[:500]), atol=1e-4)


def test_card_describes_the_files_and_the_input(fast_export, fast_run):
    card = json.loads((fast_export / "model.json").read_text())
    assert set(card["files"]) == {"model.onnx", "model.int8.onnx", "weights.npz"}
    for name, entry in card["files"].items():
        assert entry["bytes"] == (fast_export / name).stat().st_size
        assert entry["sha256"] == runtime.sha256_file(fast_export / name)
    assert card["model"] == "fast_cnn" and card["classes"] == [str(d) for d in range(10)]
    assert card["input"]["scale"] == PIXEL_SCALE and card["input"]["shape"] == [None, 1, 28, 28]
    assert "white" in card["input"]["polarity"]
    assert "training images" in card["quantization"]["calibration"]
    assert card["params"] == json.loads((fast_run / "metrics.json").read_text())["params"]
    assert {"digitpi", "torch", "onnx", "onnxruntime"} <= set(card["versions"])
    assert card["source"]["run"] == str(fast_run.resolve())

    proto = onnx.load(str(fast_export / "model.onnx"))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["digitpi.model"] == "fast_cnn"
    assert json.loads(props["digitpi.input"])["scale"] == PIXEL_SCALE
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch axis
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)  # folded into the convs


def test_weights_file_loads_without_pickle(fast_export):
    with np.load(fast_export / "weights.npz", allow_pickle=False) as archive:
        assert all(archive[k].dtype == np.float32 for k in archive.files)


def test_every_variant_has_a_writer_and_a_measurer():
    """A row of exportdir.VARIANTS is exported by its writer and measured by its backend's function."""
    assert set(export.WRITERS) == {v.name for v in VARIANTS}
    assert {v.backend for v in VARIANTS} <= set(export.MEASURERS)
    assert len({v.file for v in VARIANTS} | {CARD}) == len(VARIANTS) + 1  # no two share a file
    assert {v.backend for v in VARIANTS} == set(BACKENDS) - {"auto"}  # the CLI's choices come from the table
    assert set(PRECISIONS) == {v.precision for v in VARIANTS}


# ---------------------------------------------------------------- folding and the NumPy ops


def test_folding_keeps_the_trained_model_exact(fast_run, mnist_test):
    model, _ = rundir.load_checkpoint(fast_run)
    deploy = export.deployable(model)
    assert not any(isinstance(m, nn.BatchNorm2d | nn.Dropout) for m in deploy)
    x = torch.from_numpy(as_input(mnist_test[0][:1000]))
    with torch.no_grad():
        torch.testing.assert_close(deploy(x), model(x), atol=1e-4, rtol=1e-4)


def test_batchnorm_with_a_negative_scale_behind_a_pool_is_not_folded(fast_run, mnist_test):
    """max(s * x) != s * max(x) for s < 0: such a BN must stay a layer of its own."""
    model, _ = rundir.load_checkpoint(fast_run)
    bn = next(m for m in model if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        bn.weight[0] = -bn.weight[0].abs() - 0.5
    deploy = export.deployable(model)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in deploy) == 1
    layers, arrays = export.numpy_layers(deploy)
    assert [spec["op"] for spec in layers].count("affine") == 1
    x = as_input(mnist_test[0][:300])
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(runtime.numpy_forward(layers, arrays, x), reference, atol=1e-4)


def zoo_of_layouts() -> dict[str, nn.Sequential]:
    """Every layer option the NumPy backend implements, each in a small network."""
    torch.manual_seed(0)
    return {
        "strided_padded_conv_biasless": nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=2, padding=(1, 2), bias=False), nn.BatchNorm2d(4), nn.ReLU(),
            nn.Conv2d(4, 6, (2, 3), padding="valid"), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(6, 10)),
        "same_padding_even_kernel_zeropad": nn.Sequential(
            nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(1, 3, 2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(3, 5, 3, padding="same"), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1),
            nn.Flatten(), nn.Dropout(0.5), nn.Linear(5 * 7 * 7, 16), nn.BatchNorm1d(16), nn.ReLU(),
            nn.Linear(16, 10)),
        "bn_after_relu_stays_affine": nn.Sequential(
            nn.Conv2d(1, 4, 5), nn.ReLU(), nn.BatchNorm2d(4), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)),
    }


@pytest.mark.parametrize("name", list(zoo_of_layouts()))
def test_numpy_forward_matches_torch_for_every_layer_option(name, mnist_test):
    model = zoo_of_layouts()[name]
    for m in model.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2), m.weight.uniform_(-1.5, 1.5)
    model.eval()
    x = as_input(mnist_test[0][:200])
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    layers, arrays = export.numpy_layers(export.deployable(model))
    np.testing.assert_allclose(runtime.numpy_forward(layers, arrays, x), reference, atol=1e-4)


@pytest.mark.parametrize("model, named", [
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)), "GELU"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, groups=1, dilation=2), nn.Flatten()), "dilation"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(2)), "AdaptiveAvgPool2d"),
])
def test_unsupported_layers_are_refused_by_name(model, named, tmp_path):
    with pytest.raises(export.ExportError, match=named) as info:
        export.export_model(model, "custom", {}, tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_only_sequential_models_export(tmp_path):
    with pytest.raises(export.ExportError, match="nn.Sequential"):
        export.export_model(nn.Linear(784, 10), "linear", {}, tmp_path)


# ---------------------------------------------------------------- the command


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "digitpi.cli", *args], capture_output=True, text=True, timeout=600)


def test_cli_export_end_to_end(trained_run, tmp_path, mnist_test):
    out = tmp_path / "deploy"
    done = run_cli("export", str(trained_run), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "model.int8.onnx" in done.stdout and "test accuracy" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["model.int8.onnx", "model.json", "model.onnx", "weights.npz"]
    images, labels = mnist_test
    prediction = runtime.Classifier.load(out).predict(images[:1000])
    assert (prediction.labels == labels[:1000]).mean() > 0.98


def test_cli_export_mistakes_are_one_line_errors(tmp_path):
    missing = run_cli("export", str(tmp_path / "no-such-run"))
    assert missing.returncode != 0
    assert missing.stderr.startswith("digitpi: error: no run folder") and missing.stderr.count("\n") == 1
    (tmp_path / "not-a-run").mkdir()
    empty = run_cli("export", str(tmp_path / "not-a-run"))
    assert empty.returncode != 0 and "not a training run" in empty.stderr and empty.stderr.count("\n") == 1
    assert not (tmp_path / "not-a-run" / "export").exists()


def test_bench_infer_measures_every_backend(exported_dir, trained_run):
    done = run_cli("bench", "infer", str(exported_dir), "--calls", "5", "--seconds", "0.05", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["rows"]
    assert [r["backend"] for r in rows] == ["torch", "onnx-fp32", "onnx-int8", "numpy"]
    for row in rows:
        assert row["p99_ms"] >= row["p50_ms"] > 0 and row["images_per_s_1t"] > 0 and row["images_per_s_2t"] > 0
        assert row["peak_rss_mb"] > 0 and row["test_accuracy"] > 0.98
        assert row["epochs"] == row["epochs_run"] == rundir.load_config(trained_run).epochs
    by_backend = {r["backend"]: r for r in rows}
    assert by_backend["onnx-int8"]["file_bytes"] == (exported_dir / "model.int8.onnx").stat().st_size
    assert by_backend["numpy"]["peak_rss_mb"] < by_backend["torch"]["peak_rss_mb"]  # the Pi side loads no torch


def test_bench_infer_says_where_a_source_run_stopped(fast_run, tmp_path):
    """A reference `bench train` stopped at its target keeps the history of the epochs it ran: the
    inference table names those, not the config's schedule."""
    from digitpi.bench.infer import format_table, run_epochs

    stopped = shutil.copytree(fast_run, tmp_path / "stopped")
    history = json.loads((fast_run / rundir.HISTORY).read_text())
    (stopped / rundir.HISTORY).write_text(json.dumps({key: values[:1] for key, values in history.items()}))
    assert run_epochs({"source": {"run": str(fast_run)}}) == {"epochs": 2, "epochs_run": 2}
    epochs = run_epochs({"source": {"run": str(stopped)}})
    assert epochs == {"epochs": 2, "epochs_run": 1}
    row = {"model": "fast_cnn", **epochs, "backend": "numpy", "test_accuracy": 0.99, "file_bytes": 2048,
           "p50_ms": 0.1, "p99_ms": 0.2, "images_per_s_1t": 1e4, "images_per_s_2t": 2e4, "peak_rss_mb": 50}
    assert "| fast_cnn (1 of 2 ep) |" in format_table([row])
    assert "| fast_cnn (2 ep) |" in format_table([row | {"epochs_run": 2}])


def test_bench_infer_refuses_a_folder_without_a_card(tmp_path):
    done = run_cli("bench", "infer", str(tmp_path))
    assert done.returncode != 0 and "not an export folder" in done.stderr and done.stderr.count("\n") == 1
