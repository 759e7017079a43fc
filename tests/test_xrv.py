"""`cxr import-weights torchxrayvision:NAME`, offline: torchxrayvision's own models with seeded
random weights are put where its loader finds them (its cache folder, under the released file
names), imported through the same code path as a download, and compared with torchxrayvision's
own outputs on real images from ../shared/data. Also: the run's input contract (mean/std) through
predict, ONNX export and `cxr train --pretrained RUN`, and the pretraining-overlap warning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file

xrv = pytest.importorskip("torchxrayvision")

from cxr.cli import main  # noqa: E402
from cxr.config import DataConfig, ModelConfig, config_from_dict  # noqa: E402
from cxr.data.image_io import read_image  # noqa: E402
from cxr.errors import ConfigError, CxrError, OfflineError  # noqa: E402
from cxr.evaluate import evaluate_run  # noqa: E402
from cxr.inference.backends import read_engine_info  # noqa: E402
from cxr.inference.contract import check_contract  # noqa: E402
from cxr.inference.export import export_run  # noqa: E402
from cxr.inference.predictor import Predictor, make_engine  # noqa: E402
from cxr.models import build_model  # noqa: E402
from cxr.preprocess import model_input, preprocess  # noqa: E402
from cxr.run import load_run  # noqa: E402
from cxr.xrv import image_collections, import_torchxrayvision, pretraining_overlap  # noqa: E402

ALL, NIH, RESNET = "densenet121-res224-all", "densenet121-res224-nih", "resnet50-res512-all"


def _file_name(name: str) -> str:
    return Path(xrv.models.model_urls[name]["weights_url"]).name


def _randomise(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded random weights with BatchNorm statistics that are not the identity, and a stem
    scaled by 1/1024 as a trained model's maps [-1024, 1024] to activations of order 1 (a random
    stem gives features and logits near 1000, whose sigmoids are all 0 or 1: nothing compared)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if tensor.dtype.is_floating_point and "running_var" in name:
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
            elif tensor.dtype.is_floating_point and "running_mean" in name:
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=gen))
        stem = net.features.conv0 if hasattr(net, "features") else net.conv1
        stem.weight.mul_(1 / 1024)
        head = net.classifier if hasattr(net, "classifier") else net.fc
        head.bias.copy_(0.1 * torch.randn(head.bias.shape, generator=gen))
    return net.eval()


@pytest.fixture(scope="module")
def xrv_cache(tmp_path_factory) -> Path:
    """torchxrayvision's cache folder holding seeded random weights under the released names:
    the DenseNets as pickled modules (as released), the ResNet-50 as its inner state dict."""
    folder = tmp_path_factory.mktemp("xrv-cache")
    for seed, name in enumerate((ALL, NIH)):
        torch.manual_seed(seed)
        torch.save(_randomise(xrv.models.DenseNet(weights=None), seed), folder / _file_name(name))
    torch.manual_seed(7)
    resnet = torchvision.models.resnet50(num_classes=18)
    resnet.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    torch.save(_randomise(resnet, 7).state_dict(), folder / _file_name(RESNET))
    return folder


@pytest.fixture(scope="module")
def imported(xrv_cache, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("xrv-runs")
    out = {}
    for name in (ALL, NIH, RESNET):
        import_torchxrayvision(f"torchxrayvision:{name}", root / name, cache_dir=xrv_cache)
        out[name] = root / name
    return out


def _reference(name: str, cache: Path) -> torch.nn.Module:
    """torchxrayvision's own model, from its own loader (op_threshs set)."""
    return xrv.models.get_model(name, cache_dir=str(cache)).eval()


def _xrv_input(path: Path, size: int) -> torch.Tensor:
    """torchxrayvision's documented pipeline: skimage read, normalize to [-1024, 1024], grey,
    XRayCenterCrop, XRayResizer."""
    import skimage.io

    img = xrv.datasets.normalize(skimage.io.imread(path), 255)
    if img.ndim == 3:
        img = img[..., :3].mean(2)
    img = xrv.datasets.XRayCenterCrop()(img[None])
    img = xrv.datasets.XRayResizer(size)(img)
    return torch.from_numpy(img)[None]


def _xrv_logits(ref: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        if hasattr(ref, "features2"):
            return ref.classifier(ref.features2(x)).numpy()
        return ref.model(x).numpy()


def _kermany_files(kermany_train: Path, n: int) -> list[Path]:
    return (
        sorted((kermany_train / "NORMAL").glob("*.jpeg"))[:n]
        + sorted((kermany_train / "PNEUMONIA").glob("*.jpeg"))[:n]
    )


# ---------------------------------------------------------------------- outputs match xrv's


def test_imported_densenet_matches_torchxrayvision_end_to_end_on_real_images(
    imported, xrv_cache, kermany_train
):
    """cxr's whole path (decode, preprocess, (x/255 - 0.5) * 2048, model, sigmoid) against
    torchxrayvision's own pipeline and model on the same Kermany files. They are 224 px, so no
    resampling differs: the model inputs agree to float32 rounding and the outputs to 1e-5."""
    ref = _reference(ALL, xrv_cache)
    predictor = Predictor.from_run_dir(imported[ALL])
    thresholds = ref.op_threshs.clone()
    for path in _kermany_files(kermany_train, 3):
        x = _xrv_input(path, 224)
        prediction = predictor.predict(read_image(path).image)
        ours_x = predictor.input_tensor(prediction.preprocessed)
        assert torch.allclose(ours_x, x, atol=1e-3)  # [-1024, 1024] scale: 1e-3 is float32 noise
        with torch.no_grad():
            want = ref(x).numpy()[0]  # sigmoid + op_norm: its calibrated output
        logits = _xrv_logits(ref, x)[0]
        assert np.abs(logits).max() > 0.05  # outputs that compare something
        probs = torch.from_numpy(prediction.probabilities).float()[None]
        ours = xrv.models.op_norm(probs, thresholds).numpy()[0]
        np.testing.assert_allclose(ours, want, atol=1e-5)
        np.testing.assert_allclose(
            torch.logit(probs.double()).numpy()[0], logits, atol=1e-5, rtol=0
        )
        # op_threshs as the decision rule: p >= op_thresh exactly where op_norm(p) >= 0.5
        np.testing.assert_array_equal(prediction.positive, want >= 0.5)


def test_imported_models_match_on_torchxrayvision_inputs_of_other_sizes(
    imported, xrv_cache, nih_samples, kermany_train
):
    """NIH images at 256 and 512 px (DenseNet at 224) and Kermany at 224 (ResNet-50 at 512):
    the same float input through cxr's loaded run and torchxrayvision's model, to 1e-5. cxr's
    own resampling (cv2 INTER_AREA, then uint8) differs from skimage's anti-aliased resize: the
    inputs then differ by less than one grey level on average."""
    nih = sorted((nih_samples / "images").glob("*.png"))[:3]
    cases = [(ALL, 224, p) for p in nih] + [(RESNET, 512, _kermany_files(kermany_train, 1)[0])]
    for name, size, path in cases:
        ref = _reference(name, xrv_cache)
        run = load_run(imported[name])
        x = _xrv_input(path, size)
        with torch.no_grad():
            ours = run.model(x).numpy()
        np.testing.assert_allclose(ours, _xrv_logits(ref, x), atol=1e-5, rtol=0)
        cfg = run.config.preprocess
        ours_x = model_input(torch.from_numpy(preprocess(read_image(path).image, cfg))[None], cfg)
        grey_level = 2048 / 255
        assert float((ours_x - x).abs().mean()) < grey_level, path.name


# ---------------------------------------------------------------------- the run folder


def test_imported_run_folder_carries_findings_thresholds_contract_and_card(imported):
    labels = xrv.models.model_urls[NIH]["labels"]
    op = xrv.models.model_urls[NIH]["op_threshs"]
    run = load_run(imported[NIH])
    # the four unnamed outputs of the NIH weights are dropped; the named 14 keep their rows
    assert run.findings == [f for f in labels if f]
    assert run.info["imported_from"]["dropped_outputs"] == [14, 15, 16, 17]
    ref = xrv.models.get_model(NIH, cache_dir=str(Path(run.info["imported_from"]["file"]).parent))
    torch.testing.assert_close(run.model.head.weight, ref.classifier.weight[:14])
    np.testing.assert_allclose(run.thresholds, op[:14], rtol=1e-6)
    assert run.info["decision"]["rule"] == "per_finding"
    pre = run.config.preprocess
    assert (pre.image_size, pre.resize, pre.clahe, pre.filter) == (224, "crop", False, "none")
    assert (pre.mean, pre.std) == (0.5, 1 / 2048)
    assert [d["code"] for d in run.info["pretrained_on"]["datasets"]] == ["nih"]
    assert run.config.model.arch == "xrv-densenet121"

    everything = load_run(imported[ALL]).info["pretrained_on"]["datasets"]
    assert {d["code"] for d in everything} == {
        "nih",
        "pc",
        "chex",
        "mimic_ch",
        "google",
        "openi",
        "kaggle",
    }
    resnet = load_run(imported[RESNET])
    assert resnet.config.preprocess.image_size == 512
    assert resnet.config.model.arch == "xrv-resnet50"
    assert {d["code"] for d in resnet.info["pretrained_on"]["datasets"]} == {
        "pc",
        "nih",
        "rsna",
        "siim",
        "vin",
    }
    # two named findings without an operating point fall back to 0.5, and model.json says so
    assert resnet.info["thresholds"]["Lung Lesion"] == 0.5
    assert "Lung Lesion" in resnet.info["threshold_method"]
    assert set(resnet.model.cam_layers()) == {"last", "finer"}


def test_weights_file_takes_the_same_path_and_refuses_pickles(imported, xrv_cache, tmp_path):
    ref = _reference(ALL, xrv_cache)
    state = {k: v.contiguous() for k, v in ref.state_dict().items() if k != "op_threshs"}
    save_file(state, tmp_path / "all.safetensors")
    main(
        [
            "import-weights",
            f"torchxrayvision:{ALL}",
            "--out",
            str(tmp_path / "from-file"),
            "--weights-file",
            str(tmp_path / "all.safetensors"),
        ]
    )
    a = load_file(tmp_path / "from-file" / "model.safetensors")
    b = load_file(imported[ALL] / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)

    with pytest.raises(ConfigError, match="pickled modules"):  # never unpickled by cxr
        import_torchxrayvision(
            f"torchxrayvision:{ALL}", tmp_path / "x", weights_file=xrv_cache / _file_name(ALL)
        )
    with pytest.raises(ConfigError, match="not a torchxrayvision xrv-resnet50 state dict"):
        import_torchxrayvision(
            f"torchxrayvision:{RESNET}", tmp_path / "y", weights_file=tmp_path / "all.safetensors"
        )
    with pytest.raises(ConfigError, match="unknown weights; choose one of"):
        import_torchxrayvision("torchxrayvision:densenet121-res224-nope", tmp_path / "z")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_download_fails_clearly_offline_before_any_work(tmp_path, monkeypatch, capsys):
    """torchxrayvision's own download (requests), pointed at a closed local port as proxy so
    the test never reaches the internet: an OfflineError that says how to pre-download, and no
    run folder."""
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    cache = tmp_path / "empty-cache"
    out = tmp_path / "run"
    code = main(
        ["import-weights", f"torchxrayvision:{NIH}", "--out", str(out), "--cache-dir", str(cache)]
    )
    err = capsys.readouterr().err
    assert code == OfflineError.exit_code
    assert "on a connected machine" in err and "get_model('densenet121-res224-nih')" in err
    assert str(cache / _file_name(NIH)) in err
    assert not out.exists()


# ---------------------------------------------------------------------- serving and export


def test_imported_run_exports_to_onnx_with_its_normalisation(imported, kermany_train, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(imported[ALL], run_dir)
    cfg = load_run(run_dir).config.preprocess
    pixels = np.stack(
        [preprocess(read_image(p).image, cfg) for p in _kermany_files(kermany_train, 2)]
    )
    result = export_run(run_dir, images=pixels)
    contract = json.loads(result.contract_path.read_text())
    assert contract["normalization"]["std"] == 1 / 2048
    assert contract["preprocess"]["std"] == 1 / 2048
    assert result.max_abs_diff <= 1e-3
    torch_probs = make_engine(str(run_dir), "torch").predict_batch(pixels)
    onnx_probs = make_engine(str(run_dir), "onnx").predict_batch(pixels)
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4)

    info = read_engine_info(run_dir)
    # a contract written before preprocess carried mean/std (normalization only) still loads
    old = dict(contract, preprocess={k: v for k, v in contract["preprocess"].items()})
    del old["preprocess"]["mean"], old["preprocess"]["std"]
    result.contract_path.write_text(json.dumps(old))
    check_contract(info, result.onnx_path)
    # ... and one with cxr's default scale is refused for this run, naming the field
    old["normalization"]["std"] = 0.25
    result.contract_path.write_text(json.dumps(old))
    with pytest.raises(CxrError, match="normalization.std is 0.25"):
        check_contract(info, result.onnx_path)


def test_default_runs_keep_their_cache_key_and_normalisation():
    """mean/std are not part of the cache key: a default config hashes as it did before."""
    import hashlib

    from cxr.config import NORMALIZATION_FIELDS, PreprocessConfig, config_hash

    default = PreprocessConfig()
    before = (
        '{"image_size":224,"resize":"pad","clahe":true,"clahe_clip_limit":2.0,'
        '"clahe_tile_grid":8,"filter":"none","filter_size":3}'
    )
    assert (
        config_hash(default, NORMALIZATION_FIELDS)
        == (hashlib.sha256(before.encode()).hexdigest()[:16])
    )
    assert config_hash(default.model_copy(update={"std": 1 / 2048}), NORMALIZATION_FIELDS) == (
        config_hash(default, NORMALIZATION_FIELDS)
    )
    x = torch.full((1, 4, 4), 255, dtype=torch.uint8)
    assert float(model_input(x, default).max()) == 2.0
    model = build_model(ModelConfig(arch="resnet18"), 2)
    assert (model.input_mean, model.input_std) == (0.5, 0.25)


# ---------------------------------------------------------------------- pretraining overlap


def test_overlap_warning_names_the_shared_collection():
    info = {"pretrained_on": {"source": "torchxrayvision:x", "datasets": []}}
    info["pretrained_on"]["datasets"] = [
        {"code": "kaggle", "name": "RSNA Pneumonia Challenge", "images": "nih"}
    ]
    warning = pretraining_overlap(info, "/data/nih-chestxray14-1000", "auto")
    assert warning is not None and "RSNA Pneumonia Challenge" in warning
    assert pretraining_overlap(info, "/data/kermany-pneumonia/chest_xray/test") is None
    assert pretraining_overlap({}, "/data/nih") is None  # a run trained from scratch
    assert image_collections("/x/CheXpert-v1.0-small", "auto") == {"chexpert"}
    assert image_collections("/x/images", "nih") == {"nih"}


def test_evaluate_warns_when_the_model_was_pretrained_on_the_data(imported, nih_1000, tmp_path):
    data = DataConfig(path=str(nih_1000), limit=24)
    metrics = evaluate_run(imported[NIH], data, progress=False, label_map="nih->nih")
    assert next(iter(metrics)) == "pretraining_warning"  # the JSON's first key
    assert "NIH ChestX-ray14" in metrics["pretraining_warning"]
    assert metrics["per_finding"]


@pytest.mark.slow  # trains a model
def test_train_pretrained_run_fine_tunes_with_its_contract_and_report_warns(
    imported, nih_1000, nih_samples, tmp_path
):
    """`cxr train --pretrained RUN` on 32 real NIH images: the run's architecture and input
    contract, its backbone, the head rows of the shared findings; the fine-tuned run inherits
    pretrained_on, so its report on NIH images warns in the JSON and the HTML's first line."""
    from cxr.report.build import build_report
    from cxr.train import seed_from_run, train

    seed = load_run(imported[NIH])
    cfg = config_from_dict(
        {
            "data": {"path": str(nih_1000), "limit": 32, "val_fraction": 0.25},
            "model": {"pretrained": str(imported[NIH])},
            "train": {
                "epochs": 1,
                "batch_size": 8,
                "lr": 1e-4,
                "cache_dir": str(tmp_path / "cache"),
                "early_stopping_patience": 0,
            },
            "out_dir": str(tmp_path / "tuned"),
        }
    )
    result = train(cfg, progress=False)
    tuned = load_run(result.run_dir)
    assert tuned.config.model.arch == "xrv-densenet121"
    assert tuned.config.preprocess == seed.config.preprocess  # std 1/2048, crop, no CLAHE
    assert tuned.info["pretrained_on"] == seed.info["pretrained_on"]

    fresh = build_model(ModelConfig(arch="xrv-densenet121"), len(tuned.findings))
    kept = seed_from_run(fresh, str(imported[NIH]), tuned.findings)
    assert kept and "No Finding" not in kept
    for name in kept:
        torch.testing.assert_close(
            fresh.head.weight[tuned.findings.index(name)],
            seed.model.head.weight[seed.findings.index(name)],
        )
    conv = "features.conv0.weight"
    torch.testing.assert_close(fresh.state_dict()[conv], seed.model.state_dict()[conv])

    report = build_report(
        result.run_dir,
        DataConfig(path=str(nih_samples)),
        tmp_path / "report",
        n_boot=20,
        gallery=False,
        progress=False,
        allow_overlap=True,
    )
    assert "NIH ChestX-ray14" in report["pretraining_warning"]
    # these NIH samples overlap the run's own training images too: that stronger warning leads,
    # the pretraining one comes right after it, in the JSON and in the HTML
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["leakage"]["n_overlapping_images"] > 0
    assert list(saved)[:2] == ["leakage", "pretraining_warning"]
    html = (tmp_path / "report" / "report.html").read_text()
    body = html[html.index("<body>") :]
    assert body.index('id="leakage"') < body.index('id="pretraining"') < body.index("<h1>")
    assert not math.isnan(report["results"]["n_images"])


def test_report_on_an_imported_run_says_what_it_needs(imported, nih_samples, tmp_path):
    """An imported run has no validation images to choose operating points on: the report
    refuses clearly, before any work, and says how to get them."""
    from cxr.errors import DataError
    from cxr.report.build import build_report

    with pytest.raises(DataError, match="no validation images .*cxr evaluate.*--pretrained"):
        build_report(imported[NIH], DataConfig(path=str(nih_samples)), tmp_path, progress=False)


def test_imported_run_is_served_and_explained(imported, kermany_train, tmp_path):
    """The web API and folder prediction answer with the imported model's probabilities (its
    [-1024, 1024] input contract applied), and Grad-CAM works through the family's cam_layers."""
    import csv
    import io

    from cxr.explain.gradcam import heatmaps
    from cxr.inference.analysis import Analyser
    from cxr.serve import create_app

    path = _kermany_files(kermany_train, 1)[0]
    predictor = Predictor.from_run_dir(imported[ALL])
    expected = predictor.predict(read_image(path).image)
    engine = Analyser({"model": str(imported[ALL])})
    client = create_app({"model": str(imported[ALL])}, engine=engine).test_client()
    response = client.post(
        "/api/predict?heatmaps=Pneumonia", data={"file": (io.BytesIO(path.read_bytes()), path.name)}
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    by_name = {f["finding"]: f["probability"] for f in body["findings"]}
    for name, p in zip(expected.findings, expected.probabilities, strict=True):
        assert by_name[name] == pytest.approx(p, abs=1e-6)

    # random weights: some findings have no positive evidence (an all-zero map), not all
    maps = heatmaps(predictor, read_image(path).image)
    assert all(m.shape == (224, 224) for m in maps.values())
    assert any(float(m.std()) > 0 for m in maps.values())

    out = tmp_path / "predictions.csv"
    assert main(["predict", str(path), "--model", str(imported[ALL]), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1
    columns = [c for c in rows[0] if "Pneumonia" in c and "prob" in c.lower()] or [
        c for c in rows[0] if c == "Pneumonia"
    ]
    assert columns, rows[0].keys()
    p = expected.probabilities[expected.findings.index("Pneumonia")]
    assert float(rows[0][columns[0]]) == pytest.approx(p, abs=1e-5)
