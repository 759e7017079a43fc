"""Every reader on real files from ../shared/data, and every bad input naming what is wrong."""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxr.config import DataConfig
from cxr.data import detect_format, read_table
from cxr.data.chexpert import read_chexpert
from cxr.data.folder import parse_kermany_name, read_folder
from cxr.data.medmnist import read_medmnist
from cxr.data.nih import NIH_FINDINGS, read_nih
from cxr.data.table import load_image
from cxr.errors import DataError, OfflineError

SHARED = Path(__file__).parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="module")
def nih_labels_gz() -> Path:
    path = SHARED / "nih-chestxray14-labels" / "Data_Entry_2017_v2020.csv.gz"
    if not path.exists():
        pytest.skip(f"real data not found at {path.resolve()} (see ../shared/data/README.md)")
    return path.resolve()


def copy_jpegs(kermany_train: Path, dest: Path, cls: str, n: int) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    sources = sorted((kermany_train / cls).iterdir())[:n]
    return [Path(shutil.copy(s, dest / s.name)) for s in sources]


# --- folder ----------------------------------------------------------------------------------


def test_kermany_folder_real(kermany_train):
    table = read_folder(kermany_train)
    assert len(table) == 5216
    assert table.findings == ["NORMAL", "PNEUMONIA"]
    assert table.task == "multiclass"
    np.testing.assert_array_equal(table.labels.sum(axis=0), [1341, 3875])
    assert (table.labels.sum(axis=1) == 1).all()
    assert table.official_split is None  # class layout: no split folders
    i = table.keys.index(str(kermany_train / "PNEUMONIA" / "person1000_bacteria_2931.jpeg"))
    assert table.patient_ids[i] == "person1000" and table.meta["subtype"][i] == "bacteria"
    assert table.class_index()[i] == 1
    subtypes = pd.Series(table.meta["subtype"]).value_counts().to_dict()
    assert subtypes == {"bacteria": 2530, "virus": 1345, "": 1341}
    assert len(set(table.patient_ids)) < len(table)  # several images per patient
    # one patient id never spans both classes' naming schemes
    normal = {p for p, c in zip(table.patient_ids, table.class_index(), strict=True) if c == 0}
    assert all(p.startswith(("IM-", "NORMAL2-IM-")) for p in normal)


def test_kermany_split_layout_keeps_official_split(kermany_train):
    chest_xray = kermany_train.parent
    table = read_folder(chest_xray)
    assert len(table) == 5216
    assert set(table.official_split) == {"train"}
    unwrapped = read_folder(chest_xray.parent)  # kermany-pneumonia/ holds only chest_xray/
    assert unwrapped.keys == table.keys


@pytest.mark.parametrize(
    ("stem", "patient", "subtype"),
    [
        ("person1000_bacteria_2931", "person1000", "bacteria"),
        ("person1000_virus_1681", "person1000", "virus"),
        ("person1_virus_12_3", "person1", "virus"),
        ("IM-0115-0001", "IM-0115", ""),
        ("IM-0429-0001-0002", "IM-0429", ""),
        ("NORMAL2-IM-1326-0001", "NORMAL2-IM-1326", ""),
        ("scan_042", "scan_042", ""),
    ],
)
def test_parse_kermany_name(stem, patient, subtype):
    assert parse_kermany_name(stem) == (patient, subtype)


def test_split_folders_and_hidden_files(tmp_path, kermany_train):
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        copy_jpegs(kermany_train, tmp_path / split / "NORMAL", "NORMAL", n)
        copy_jpegs(kermany_train, tmp_path / split / "PNEUMONIA", "PNEUMONIA", n)
    (tmp_path / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\x00")
    (tmp_path / "train" / ".hidden").mkdir()
    (tmp_path / "README.txt").write_text("dataset notes")
    table = read_folder(tmp_path)
    assert len(table) == 12
    assert table.official_split.count("train") == 6
    assert table.official_split.count("val") == 2
    assert table.official_split.count("test") == 4
    assert not any(".DS_Store" in k for k in table.keys)
    img = load_image(table, 0)
    assert img.dtype == np.float32 and img.shape == (224, 224)


def test_non_image_in_class_folder(tmp_path, kermany_train):
    copy_jpegs(kermany_train, tmp_path / "NORMAL", "NORMAL", 2)
    copy_jpegs(kermany_train, tmp_path / "PNEUMONIA", "PNEUMONIA", 2)
    bad = tmp_path / "PNEUMONIA" / "labels.xlsx"
    bad.write_bytes(b"PK")
    with pytest.raises(DataError, match="not an image") as info:
        read_folder(tmp_path)
    assert str(bad) in str(info.value)
    table = read_folder(tmp_path, skip_bad=True)
    assert len(table) == 4
    assert len(table.skipped) == 1 and str(bad) in table.skipped[0]
    assert table.subset([0, 1]).skipped == table.skipped  # carried through subset


def test_image_outside_class_folders(tmp_path, kermany_train):
    copy_jpegs(kermany_train, tmp_path / "NORMAL", "NORMAL", 1)
    copy_jpegs(kermany_train, tmp_path / "PNEUMONIA", "PNEUMONIA", 1)
    copy_jpegs(kermany_train, tmp_path, "NORMAL", 1)
    with pytest.raises(DataError, match="outside any class folder"):
        read_folder(tmp_path)
    assert len(read_folder(tmp_path, skip_bad=True).skipped) == 1


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="empty"):
        read_folder(tmp_path)
    (tmp_path / "notes.txt").write_text("no class folders here")
    with pytest.raises(DataError, match="at least 2 class folders"):
        read_folder(tmp_path)


def test_class_folders_without_images(tmp_path):
    (tmp_path / "NORMAL").mkdir()
    (tmp_path / "PNEUMONIA").mkdir()
    with pytest.raises(DataError, match="no images"):
        read_folder(tmp_path)


def test_single_class(tmp_path, kermany_train):
    copy_jpegs(kermany_train, tmp_path / "NORMAL", "NORMAL", 2)
    with pytest.raises(DataError, match="found only 'NORMAL'"):
        read_folder(tmp_path)


def test_classes_differ_between_train_and_test(tmp_path, kermany_train):
    copy_jpegs(kermany_train, tmp_path / "train" / "NORMAL", "NORMAL", 1)
    copy_jpegs(kermany_train, tmp_path / "train" / "PNEUMONIA", "PNEUMONIA", 1)
    copy_jpegs(kermany_train, tmp_path / "test" / "NORMAL", "NORMAL", 1)
    copy_jpegs(kermany_train, tmp_path / "test" / "COVID", "PNEUMONIA", 1)
    with pytest.raises(DataError, match="differ between splits"):
        read_folder(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="not found") as info:
        read_folder(tmp_path / "nowhere")
    assert "nowhere" in str(info.value)


# --- NIH -------------------------------------------------------------------------------------


def test_nih_1000_real(nih_1000):
    table = read_nih(nih_1000)
    assert len(table) == 840
    assert table.findings == NIH_FINDINGS and table.task == "multilabel"
    frame = pd.read_csv(nih_1000 / "Data_Entry_2017.csv")
    no_finding = (frame["Finding Labels"] == "No Finding").to_numpy()
    assert (table.labels[no_finding] == 0).all()
    assert (table.labels[~no_finding].sum(axis=1) >= 1).all()
    row = table.keys.index(str(nih_1000 / "images" / "00000001_001.png"))  # Cardiomegaly|Emphysema
    positives = [f for f, v in zip(NIH_FINDINGS, table.labels[row], strict=True) if v == 1]
    assert positives == ["Cardiomegaly", "Emphysema"]
    assert table.patient_ids[row] == "1"
    assert (table.meta["sex"][row], table.meta["age"][row], table.meta["view"][row]) == (
        "M",
        58,
        "PA",
    )
    assert table.official_split is None
    img = load_image(table, row)
    assert img.shape == (64, 64) and img.dtype == np.float32


def test_nih_samples_real(nih_samples):
    table = read_nih(nih_samples / "Data_Entry_2017.csv")  # the CSV itself works too
    assert len(table) == 16
    i = [Path(k).name for k in table.keys].index("00000017_000.png")
    positives = {f for f, v in zip(NIH_FINDINGS, table.labels[i], strict=True) if v == 1}
    assert positives == {"Effusion", "Infiltration", "Nodule"}
    assert set(table.meta["view"]) == {"PA", "AP"}


def test_nih_official_split_lists(tmp_path, nih_samples):
    shutil.copy(nih_samples / "Data_Entry_2017.csv", tmp_path)
    names = pd.read_csv(tmp_path / "Data_Entry_2017.csv")["Image Index"].tolist()
    (tmp_path / "train_val_list.txt").write_text("\n".join(names[:12]) + "\n")
    (tmp_path / "test_list.txt").write_text("\n".join(names[12:]) + "\n")
    table = read_nih(tmp_path, images=nih_samples / "images")
    assert table.official_split == ["train"] * 12 + ["test"] * 4


def test_nih_release_folders_images_00x(tmp_path, nih_samples):
    shutil.copy(nih_samples / "Data_Entry_2017.csv", tmp_path)
    for i, png in enumerate(sorted((nih_samples / "images").iterdir())):
        folder = tmp_path / f"images_00{1 + i % 2}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, folder)
    table = read_nih(tmp_path)
    assert len(table) == 16
    assert {Path(k).parent.parent.name for k in table.keys} == {"images_001", "images_002"}


def test_nih_full_gz_table_with_images_folder(nih_labels_gz, nih_1000):
    with pytest.raises(DataError, match="not found") as info:
        read_nih(nih_labels_gz, images=nih_1000)
    assert "row" in str(info.value)
    table = read_nih(nih_labels_gz, images=nih_1000, skip_bad=True)
    assert len(table) == 840
    assert len(table.skipped) == 112_120 - 840
    assert table.findings == NIH_FINDINGS


def write_nih_csv(tmp_path: Path, nih_samples: Path, edit) -> Path:
    frame = pd.read_csv(nih_samples / "Data_Entry_2017.csv")
    frame = edit(frame)
    frame.to_csv(tmp_path / "Data_Entry_2017.csv", index=False)
    (tmp_path / "images").symlink_to(nih_samples / "images")
    return tmp_path


def test_nih_unknown_label_names_csv_and_row(tmp_path, nih_samples):
    def edit(frame):
        frame.loc[4, "Finding Labels"] = "Effusion|Pneumonitis"
        return frame

    root = write_nih_csv(tmp_path, nih_samples, edit)
    with pytest.raises(DataError, match="unknown finding 'Pneumonitis'") as info:
        read_nih(root)
    message = str(info.value)
    assert "Data_Entry_2017.csv" in message and "row 5" in message and "line 6" in message
    assert info.value.row == 5


def test_nih_missing_column(tmp_path, nih_samples):
    root = write_nih_csv(tmp_path, nih_samples, lambda f: f.drop(columns=["Patient ID"]))
    with pytest.raises(DataError, match="'Patient ID' missing"):
        read_nih(root)


def test_nih_missing_image_and_skip_bad(tmp_path, nih_samples):
    def edit(frame):
        frame.loc[2, "Image Index"] = "99999999_000.png"
        return frame

    root = write_nih_csv(tmp_path, nih_samples, edit)
    with pytest.raises(DataError, match="99999999_000.png") as info:
        read_nih(root)
    assert info.value.row == 3
    table = read_nih(root, skip_bad=True)
    assert len(table) == 15
    assert len(table.skipped) == 1 and "99999999_000.png" in table.skipped[0]


def test_nih_folder_without_csv(tmp_path):
    with pytest.raises(DataError, match="no NIH label file"):
        read_nih(tmp_path)


# --- CheXpert --------------------------------------------------------------------------------

CHEXPERT_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]


@pytest.fixture
def chexpert_csv(tmp_path, nih_samples) -> Path:
    """valid.csv in CheXpert's layout (paths from the dataset's parent) over real NIH PNGs."""
    root = tmp_path / "CheXpert-v1.0-small"
    pngs = sorted((nih_samples / "images").iterdir())[:4]
    rows = []
    values = [("1", "0", "-1"), ("0", "", "1.0"), ("-1", "1", ""), ("", "-1.0", "0")]
    for i, (png, (a, b, c)) in enumerate(zip(pngs, values, strict=True)):
        rel = Path("CheXpert-v1.0-small/valid") / f"patient{64541 + i // 2:05d}" / f"study{i}"
        (tmp_path / rel).mkdir(parents=True)
        shutil.copy(png, tmp_path / rel / "view1_frontal.png")
        rows.append([f"{rel}/view1_frontal.png", "Female", str(60 + i), "Frontal", "AP", a, b, c])
    frame = pd.DataFrame(rows, columns=[*CHEXPERT_COLUMNS, "Cardiomegaly", "Edema", "Pneumonia"])
    frame.to_csv(root / "valid.csv", index=False)
    return root / "valid.csv"


def test_chexpert_values_and_uncertain_ignore(chexpert_csv):
    table = read_chexpert(chexpert_csv)
    assert table.findings == ["Cardiomegaly", "Edema", "Pneumonia"]
    assert table.task == "multilabel"
    expected = [[1, 0, np.nan], [0, 0, 1], [np.nan, 1, 0], [0, np.nan, 0]]
    np.testing.assert_array_equal(table.labels, np.array(expected, dtype=np.float32))
    assert table.patient_ids == ["patient64541", "patient64541", "patient64542", "patient64542"]
    assert table.official_split == ["val"] * 4
    assert table.meta["age"] == [60, 61, 62, 63] and table.meta["view"] == ["AP"] * 4
    img = load_image(table, 0)
    assert img.dtype == np.float32 and img.ndim == 2 and 0 <= img.min() <= img.max() <= 1


@pytest.mark.parametrize(("policy", "value"), [("ones", 1.0), ("zeros", 0.0)])
def test_chexpert_uncertain_policies(chexpert_csv, policy, value):
    table = read_chexpert(chexpert_csv, uncertain=policy)
    assert not np.isnan(table.labels).any()
    assert (
        table.labels[0, 2] == value and table.labels[2, 0] == value and table.labels[3, 1] == value
    )
    assert table.labels[1, 1] == 0.0  # blank stays negative under every policy


def test_chexpert_bad_value_names_row_and_column(chexpert_csv):
    frame = pd.read_csv(chexpert_csv, dtype=str, keep_default_na=False)
    frame.loc[2, "Edema"] = "2"
    frame.to_csv(chexpert_csv, index=False)
    with pytest.raises(DataError, match="column 'Edema' has '2'") as info:
        read_chexpert(chexpert_csv)
    assert info.value.row == 3 and "valid.csv" in str(info.value)


def test_chexpert_missing_path_column(tmp_path):
    csv = tmp_path / "train.csv"
    pd.DataFrame({"Image": ["a.png"], "Edema": ["1"]}).to_csv(csv, index=False)
    with pytest.raises(DataError, match="'Path' missing"):
        read_chexpert(csv)


def test_chexpert_missing_image_and_skip_bad(chexpert_csv):
    frame = pd.read_csv(chexpert_csv, dtype=str, keep_default_na=False)
    frame.loc[1, "Path"] = "CheXpert-v1.0-small/valid/patient1/study1/gone.jpg"
    frame.to_csv(chexpert_csv, index=False)
    with pytest.raises(DataError, match="gone.jpg") as info:
        read_chexpert(chexpert_csv)
    assert info.value.row == 2
    table = read_chexpert(chexpert_csv, skip_bad=True)
    assert len(table) == 3 and "gone.jpg" in table.skipped[0]


def test_chexpert_absolute_paths_patient_column_and_stem(tmp_path, nih_samples):
    pngs = sorted((nih_samples / "images").iterdir())[:3]
    frame = pd.DataFrame(
        {"Path": [str(p) for p in pngs], "Patient ID": ["7", "7", ""], "Edema": ["1", "0", ""]}
    )
    frame.to_csv(tmp_path / "mine.csv", index=False)
    table = read_chexpert(tmp_path / "mine.csv")
    assert table.patient_ids == ["7", "7", pngs[2].stem]
    assert table.official_split is None
    np.testing.assert_array_equal(table.labels[:, 0], [1, 0, 0])


def test_chexpert_unknown_policy(chexpert_csv):
    with pytest.raises(ValueError, match="uncertain"):
        read_chexpert(chexpert_csv, uncertain="maybe")


# --- MedMNIST --------------------------------------------------------------------------------


@pytest.fixture
def no_medmnist(monkeypatch):
    """As if the medmnist package were not installed: no network, class names class_0.."""
    monkeypatch.setitem(sys.modules, "medmnist", None)


def small_greys(kermany_train: Path, cls: str, n: int) -> np.ndarray:
    paths = sorted((kermany_train / cls).iterdir())[:n]
    return np.stack([cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (28, 28)) for p in paths])


@pytest.fixture
def pneumonia_npz(tmp_path, kermany_train) -> Path:
    images = np.concatenate(
        [small_greys(kermany_train, "NORMAL", 5), small_greys(kermany_train, "PNEUMONIA", 5)]
    )
    labels = np.array([0] * 5 + [1] * 5, dtype=np.uint8)[:, None]
    order = [0, 5, 1, 6, 2, 7, 3, 8, 4, 9]  # train 6, val 2, test 2, both classes in each
    images, labels = images[order], labels[order]
    path = tmp_path / "pneumoniamnist.npz"
    np.savez(
        path,
        train_images=images[:6],
        train_labels=labels[:6],
        val_images=images[6:8],
        val_labels=labels[6:8],
        test_images=images[8:],
        test_labels=labels[8:],
    )
    return path


def test_medmnist_npz_multiclass(pneumonia_npz, no_medmnist):
    table = read_medmnist(pneumonia_npz)
    assert len(table) == 10 and table.task == "multiclass"
    assert table.findings == ["class_0", "class_1"]
    assert (
        table.keys[0] == "pneumoniamnist.npz#train/0"
        and table.keys[7] == "pneumoniamnist.npz#val/1"
    )
    assert table.official_split == ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    assert table.patient_ids == table.keys  # each image its own patient
    with np.load(pneumonia_npz) as data:
        np.testing.assert_array_equal(table.class_index()[:6], data["train_labels"][:, 0])
        np.testing.assert_allclose(load_image(table, 8), data["test_images"][0] / 255.0, atol=1e-6)


def test_medmnist_class_names_from_info(pneumonia_npz, monkeypatch):
    fake = types.ModuleType("medmnist")
    fake.INFO = {
        "pneumoniamnist": {
            "python_class": "PneumoniaMNIST",
            "label": {"0": "normal", "1": "pneumonia"},
        }
    }
    monkeypatch.setitem(sys.modules, "medmnist", fake)
    table = read_medmnist("pneumoniamnist", root=pneumonia_npz.parent)  # local file: no download
    assert table.findings == ["normal", "pneumonia"]


def test_chestmnist_multilabel_uses_nih_names(tmp_path, kermany_train, no_medmnist):
    images = small_greys(kermany_train, "NORMAL", 4)
    labels = np.zeros((4, 14), dtype=np.uint8)
    labels[1, 2] = labels[3, [0, 13]] = 1
    path = tmp_path / "chestmnist.npz"
    np.savez(path, train_images=images, train_labels=labels)
    table = read_medmnist(path)
    assert table.task == "multilabel" and table.findings == NIH_FINDINGS
    np.testing.assert_array_equal(table.labels, labels)


def test_medmnist_offline_without_package(tmp_path, no_medmnist):
    with pytest.raises(OfflineError, match="pneumoniamnist.npz") as info:
        read_medmnist("pneumoniamnist", root=tmp_path)
    assert str(tmp_path) in str(info.value) and "medmnist" in str(info.value)


def test_medmnist_offline_download_fails(tmp_path, monkeypatch):
    class PneumoniaMNIST:
        def __init__(self, **kwargs):
            raise ConnectionError("Name or service not known")

    fake = types.ModuleType("medmnist")
    fake.INFO = {"pneumoniamnist": {"python_class": "PneumoniaMNIST", "label": {}}}
    fake.PneumoniaMNIST = PneumoniaMNIST
    monkeypatch.setitem(sys.modules, "medmnist", fake)
    with pytest.raises(OfflineError, match="could not download") as info:
        read_medmnist("pneumoniamnist", root=tmp_path / "cache")
    assert str(tmp_path / "cache" / "pneumoniamnist.npz") in str(info.value)


def test_medmnist_bad_npz(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="broken.npz"):
        read_medmnist(path)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(DataError, match="train_images|_images"):
        read_medmnist(tmp_path / "other.npz")


# --- read_table ------------------------------------------------------------------------------


def test_detect_and_read_each_format(
    kermany_train, nih_samples, chexpert_csv, pneumonia_npz, no_medmnist
):
    assert detect_format(nih_samples) == "nih"
    assert detect_format(kermany_train) == "folder"
    assert detect_format(chexpert_csv) == "chexpert"
    assert detect_format(nih_samples / "Data_Entry_2017.csv") == "nih"
    assert detect_format(pneumonia_npz) == "medmnist"
    assert detect_format("chestmnist") == "medmnist"
    assert len(read_table(DataConfig(path=str(nih_samples)))) == 16
    assert len(read_table(DataConfig(path=str(chexpert_csv), uncertain="ones"))) == 4
    assert len(read_table(DataConfig(path=str(pneumonia_npz)))) == 10
    cfg = DataConfig(
        path=str(pneumonia_npz.parent), format="medmnist", medmnist_flag="pneumoniamnist"
    )
    assert len(read_table(cfg)) == 10


def test_read_table_offline_flag(tmp_path, no_medmnist, monkeypatch):
    monkeypatch.setattr("cxr.data.medmnist.DEFAULT_ROOT", tmp_path)
    with pytest.raises(OfflineError):
        read_table(DataConfig(path="pneumoniamnist"))


def test_read_table_synthetic_calls_its_reader(monkeypatch, nih_samples):
    calls = []
    monkeypatch.setattr("cxr.data.synthetic.read_synthetic", lambda p: calls.append(p) or "table")
    assert read_table(DataConfig(path="/some/where", format="synthetic")) == "table"
    assert calls == ["/some/where"]


def test_read_table_unknown_path(tmp_path):
    with pytest.raises(DataError, match="not found") as info:
        read_table(DataConfig(path=str(tmp_path / "missing")))
    assert "missing" in str(info.value)
    odd = tmp_path / "table.xlsx"
    odd.write_bytes(b"PK")
    with pytest.raises(DataError, match="cannot tell"):
        read_table(DataConfig(path=str(odd)))
    csv = tmp_path / "x.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="unknown CSV layout"):
        read_table(DataConfig(path=str(csv)))


# --- PACS exports: extensionless DICOM, DICOMDIR, header metadata -------------------------------


def test_pacs_folder_with_extensionless_dicom(tmp_path, kermany_train):
    """Real CR files (pydicom-data) as a PACS export names them, beside JPEGs in another class."""
    from pydicom.data import get_testdata_file

    rg1 = get_testdata_file("RG1_UNCR.dcm", download=False)
    rg3 = get_testdata_file("RG3_UNCR.dcm", download=False)
    if rg1 is None or rg3 is None:
        pytest.skip("pydicom-data is not installed")
    series = tmp_path / "DICOM" / "S00001"
    series.mkdir(parents=True)
    (series / "IM000000").write_bytes(Path(rg1).read_bytes())
    (series / "1.2.840.113619.2.55.3").write_bytes(Path(rg3).read_bytes())  # a UID name
    (tmp_path / "DICOM" / "DICOMDIR").write_bytes(Path(rg1).read_bytes()[:132])
    copy_jpegs(kermany_train, tmp_path / "NORMAL", "NORMAL", 2)
    table = read_folder(tmp_path)
    names = sorted(Path(k).name for k in table.keys)
    assert "IM000000" in names and "1.2.840.113619.2.55.3" in names and len(table) == 4
    assert len(table.skipped) == 1 and "DICOMDIR" in table.skipped[0]
    i = [Path(k).name for k in table.keys].index("IM000000")
    assert table.meta["sex"][i] == "F" and table.meta["view"][i] == "PA"
    assert table.meta["body_part"][i] == "CHEST" and table.meta["modality"][i] == "CR"
    assert load_image(table, i).shape == (1955, 1841)
    jpeg = next(n for n, k in enumerate(table.keys) if k.endswith(".jpeg"))
    assert table.meta["sex"][jpeg] is None
