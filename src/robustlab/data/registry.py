"""Named data sets: where their files live, their tasks, and how to get them.

| name                 | files under the data dir                 | tasks (classes)                  |
|----------------------|------------------------------------------|----------------------------------|
| plantvillage-tomato  | plantvillage_tomato_96px.npz             | unhealthy (2), disease (10)      |
| fashion-mnist        | fashion_mnist/{train,t10k}-*-ubyte.gz    | class (10)                       |
| mnist                | mnist/{train,t10k}-*-ubyte.gz            | digit (10)                       |
| utkface-gender       | utkface_gender_96px.npz                  | gender (2), race (5)             |
| digits               | none: bundled with scikit-learn          | digit (10)                       |

Fashion-MNIST and MNIST: the official train (60,000) and test (10,000) files are merged, in
that order, into one pool of 70,000 images, which ``DataSpec.split`` then splits like every
other source. One split rule for every data set keeps ``split``, ``seed``, ``stratify``,
``limit`` and ``classes`` meaning the same thing everywhere; the price is that "test" is not
the official test set, so accuracies are not directly comparable with published ones
(the official test images are pool indices 60,000..69,999).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robustlab.data import download as dl
from robustlab.data.arrays import RawData, file_stamp, make_raw, read_npz_array
from robustlab.data.download import RemoteFile
from robustlab.data.idx import read_idx
from robustlab.errors import UserError, lookup, unknown_name

ENV_DATA_DIR = "ROBUSTLAB_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/robustlab/data")


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """``data_dir`` if given, else ``$ROBUSTLAB_DATA_DIR``, else ``~/.cache/robustlab/data``."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(ENV_DATA_DIR, "").strip() or DEFAULT_DATA_DIR
    path = Path(data_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"data dir {path} is a file, not a folder")
    return path


@dataclass(frozen=True)
class Task:
    """One labelling of a named data set."""

    label_key: str  # array (npz key) holding the labels
    num_classes: int
    classes: tuple[str, ...] | None = None  # fixed names, or None: read from names_key
    names_key: str | None = None


@dataclass(frozen=True)
class NamedDataset:
    name: str
    description: str
    files: tuple[RemoteFile, ...]  # what must be in the data dir
    tasks: dict[str, Task]
    default_task: str
    reader: Callable[[NamedDataset, Path, Task], RawData] = field(repr=False)
    how_to_get: str
    licence: str

    @property
    def downloadable(self) -> bool:
        return bool(self.files) and all(f.urls and f.sha256 for f in self.files)

    def task(self, name: str | None) -> tuple[str, Task]:
        name = name or self.default_task
        return name, lookup(f"task for data set '{self.name}'", name, self.tasks)


@dataclass(frozen=True)
class DatasetInfo:
    """What ``robustlab data list`` shows for one named data set."""

    name: str
    description: str
    tasks: dict[str, int]  # task -> number of classes
    default_task: str
    files: tuple[str, ...]  # where the files are expected (absolute paths)
    present: bool
    downloadable: bool
    how_to_get: str
    licence: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "tasks": dict(self.tasks),
            "default_task": self.default_task,
            "files": list(self.files),
            "present": self.present,
            "downloadable": self.downloadable,
            "how_to_get": self.how_to_get,
            "licence": self.licence,
        }


# ---------------------------------------------------------------- readers


def _read_npz_task(dataset: NamedDataset, data_dir: Path, task: Task) -> RawData:
    path = data_dir / dataset.files[0].path
    return _npz_task_cached(str(path), file_stamp(path), task)


@functools.lru_cache(maxsize=8)
def _npz_task_cached(path: str, stamp: tuple[int, int], task: Task) -> RawData:
    file = Path(path)
    images = read_npz_array(file, "images")
    labels = read_npz_array(file, task.label_key)
    names: Any = task.classes
    if names is None:
        names = read_npz_array(file, task.names_key or "class_names")
    raw = make_raw(images, labels, names, path)
    if len(raw.classes) != task.num_classes:
        raise UserError(
            f"{path}: expected {task.num_classes} classes for labels '{task.label_key}', "
            f"the file names {len(raw.classes)}"
        )
    return raw


def _read_idx_pool(dataset: NamedDataset, data_dir: Path, task: Task) -> RawData:
    paths = [_existing(data_dir / f.path) for f in dataset.files]
    key = tuple((str(p), *file_stamp(p)) for p in paths)
    return _idx_pool_cached(key, task.classes)


@functools.lru_cache(maxsize=4)
def _idx_pool_cached(key: tuple[tuple[str, int, int], ...], classes: tuple[str, ...]) -> RawData:
    train_x, train_y, test_x, test_y = (read_idx(Path(entry[0])) for entry in key)
    where = str(Path(key[0][0]).parent)
    for x, y, part in ((train_x, train_y, "train"), (test_x, test_y, "t10k")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise UserError(
                f"{where}: {part} images {tuple(x.shape)} and labels {tuple(y.shape)} do not "
                "match (expected (N, 28, 28) images and N labels)"
            )
    if train_x.shape[1:] != test_x.shape[1:]:
        raise UserError(f"{where}: train and t10k images differ in size")
    images = np.concatenate([train_x, test_x])
    labels = np.concatenate([train_y, test_y])
    raw = make_raw(images, labels, list(classes), where)
    return dataclasses.replace(raw, official_train=len(train_x))  # for split='official'


def _existing(path: Path) -> Path:
    """``x.gz`` may also be present uncompressed as ``x``."""
    if not path.exists() and path.suffix == ".gz" and path.with_suffix("").exists():
        return path.with_suffix("")
    return path


def _read_digits(dataset: NamedDataset, data_dir: Path, task: Task) -> RawData:
    return _digits_cached()


@functools.lru_cache(maxsize=1)
def _digits_cached() -> RawData:
    """scikit-learn's bundled digits: (1797, 8, 8) values 0..16, scaled to [0, 1]."""
    images, target = _read_digits_csv()
    return make_raw(
        (images / 16.0).astype(np.float32), target, list(DIGIT_CLASSES), "sklearn digits"
    )


def _read_digits_csv() -> tuple[np.ndarray, np.ndarray]:
    # The same file load_digits() reads, found without importing sklearn (whose import pulls
    # in scipy.stats and takes seconds); load_digits() is the fallback if the layout changes.
    found = importlib.util.find_spec("sklearn")
    locations = list(found.submodule_search_locations or []) if found else []
    csv = Path(locations[0], "datasets", "data", "digits.csv.gz") if locations else None
    if csv is not None and csv.exists():
        data = np.loadtxt(csv, delimiter=",")
        if data.shape == (1797, 65):
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


# ---------------------------------------------------------------- the registry

_IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
_FASHION_SHA256 = (
    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
)
_FASHION_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
)
_MNIST_SHA256 = (
    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
)
_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGIT_CLASSES = tuple(str(i) for i in range(10))


def _idx_files(
    folder: str, sums: tuple[str, ...], mirrors: tuple[str, ...]
) -> tuple[RemoteFile, ...]:
    return tuple(
        RemoteFile(f"{folder}/{name}", sha, tuple(m + name for m in mirrors))
        for name, sha in zip(_IDX_FILES, sums, strict=True)
    )


def _idx_dataset(
    name: str,
    description: str,
    files: tuple[RemoteFile, ...],
    task: tuple[str, tuple[str, ...]],
    mirror: str,
    licence: str,
) -> NamedDataset:
    """A 10-class MNIST-format set: four idx files, official train + test pooled."""
    task_name, classes = task
    return NamedDataset(
        name=name,
        description=description,
        files=files,
        tasks={task_name: Task("labels", 10, classes)},
        default_task=task_name,
        reader=_read_idx_pool,
        how_to_get=f"downloaded automatically when online, or fetch the four .gz files from {mirror}",
        licence=licence,
    )


def _npz_dataset(
    name: str,
    description: str,
    tasks: dict[str, Task],
    source: str,
    label_arrays: str,
    licence: str,
) -> NamedDataset:
    """A 96x96 RGB set prepared offline as one ``<name>_96px.npz``: ``images`` plus the label
    arrays of its tasks (the first task is the default)."""
    return NamedDataset(
        name=name,
        description=description,
        files=(RemoteFile(f"{name.replace('-', '_')}_96px.npz"),),
        tasks=tasks,
        default_task=next(iter(tasks)),
        reader=_read_npz_task,
        how_to_get=(
            f"no public file exists in this format: build it from {source} as an .npz with "
            f"'images' uint8 (N,96,96,3), {label_arrays}, or copy it from a machine that has it"
        ),
        licence=licence,
    )


DATASETS: dict[str, NamedDataset] = {
    d.name: d
    for d in (
        _npz_dataset(
            "plantvillage-tomato",
            "PlantVillage tomato leaves, 96x96 RGB: 1,585 healthy + 2,412 diseased",
            {
                "unhealthy": Task("unhealthy", 2, ("healthy", "unhealthy")),
                "disease": Task("disease", 10, None, "class_names"),
            },
            "the PlantVillage tomato images (Hughes & Salathe 2015, e.g. Mendeley data "
            "'tywbtsjrjv')",
            "'unhealthy' 0/1, 'disease' 0..9 and 'class_names'",
            "CC BY-SA 3.0 (PlantVillage)",
        ),
        _idx_dataset(
            "fashion-mnist",
            "Fashion-MNIST, 28x28 grey, 70,000 images (official train + test merged)",
            _idx_files("fashion_mnist", _FASHION_SHA256, _FASHION_MIRRORS),
            ("class", FASHION_CLASSES),
            _FASHION_MIRRORS[1],
            "MIT (Zalando Research)",
        ),
        _idx_dataset(
            "mnist",
            "MNIST handwritten digits, 28x28 grey, 70,000 images (train + test merged)",
            _idx_files("mnist", _MNIST_SHA256, _MNIST_MIRRORS),
            ("digit", DIGIT_CLASSES),
            _MNIST_MIRRORS[0],
            "CC BY-SA 3.0 (LeCun, Cortes, Burges)",
        ),
        _npz_dataset(
            "utkface-gender",
            "UTKFace aligned faces, 96x96 RGB, 1,000 male + 1,000 female, ages 18-70",
            {
                "gender": Task("gender", 2, None, "gender_names"),
                "race": Task("race", 5, None, "race_names"),
            },
            "UTKFace 'aligned & cropped' faces (Zhang, Song, Qi 2017)",
            "'gender' 0/1 and 'gender_names'",
            "non-commercial research use only (UTKFace)",
        ),
        NamedDataset(
            name="digits",
            description="scikit-learn's 8x8 grey handwritten digits, 1,797 images",
            files=(),
            tasks={"digit": Task("target", 10, DIGIT_CLASSES)},
            default_task="digit",
            reader=_read_digits,
            how_to_get="bundled with scikit-learn; always available",
            licence="CC BY 4.0 (UCI optical recognition of handwritten digits)",
        ),
    )
}


def canonical_name(name: str) -> str | None:
    """The registry name for ``name`` ('Fashion_MNIST' -> 'fashion-mnist'), or None."""
    key = name.strip().lower().replace("_", "-")
    return key if key in DATASETS else None


def get_dataset(name: str) -> NamedDataset:
    key = canonical_name(name)
    if key is None:
        raise unknown_name("data set", name, DATASETS)
    return DATASETS[key]


def _present(dataset: NamedDataset, data_dir: Path) -> bool:
    return all(_existing(data_dir / f.path).exists() for f in dataset.files)


def list_datasets(data_dir: str | os.PathLike[str] | None = None) -> list[DatasetInfo]:
    """Every named data set, with where its files are expected and whether they are there."""
    root = resolve_data_dir(data_dir)
    return [
        DatasetInfo(
            name=d.name,
            description=d.description,
            tasks={name: task.num_classes for name, task in d.tasks.items()},
            default_task=d.default_task,
            files=tuple(str(root / f.path) for f in d.files) or ("(bundled with scikit-learn)",),
            present=_present(d, root),
            downloadable=d.downloadable,
            how_to_get=d.how_to_get,
            licence=d.licence,
        )
        for d in DATASETS.values()
    ]


def load_named(
    name: str,
    task: str | None,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool | None = None,
    opener: dl.Opener | None = None,
) -> tuple[RawData, str]:
    """The raw arrays of a named set and the task used; fetches missing files when allowed."""
    dataset = get_dataset(name)
    task_name, task_spec = dataset.task(task)
    root = resolve_data_dir(data_dir)
    if not _present(dataset, root):
        ensure_files(dataset, root, download=download, opener=opener)
    return dataset.reader(dataset, root, task_spec), task_name


def ensure_files(
    dataset: NamedDataset,
    root: Path,
    *,
    download: bool | None = None,
    opener: dl.Opener | None = None,
) -> None:
    """Make sure every file of ``dataset`` is in ``root``, or raise ONE clear ``UserError``."""
    missing = [f for f in dataset.files if not _existing(root / f.path).exists()]
    if not missing:
        return
    allowed = (not dl.offline()) if download is None else download
    failures: list[str] = []
    if allowed and dataset.downloadable:
        failures = dl.fetch_files(missing, root, opener=opener)
        if not failures:
            return
    names = ", ".join(Path(f.path).name for f in missing)
    folders = sorted({str((root / f.path).parent) for f in missing})
    if not dataset.downloadable:
        why = "it cannot be downloaded automatically"
    elif not allowed:
        why = "downloads are off (ROBUSTLAB_OFFLINE is set or download=False)"
    else:
        why = "the download failed: " + " | ".join(failures)
    raise UserError(
        f"data set '{dataset.name}' not found: looked for {names} in {', '.join(folders)}; "
        f"{why}. To get it: {dataset.how_to_get}; put the files there, or point --data-dir / "
        f"${ENV_DATA_DIR} at a folder that has them"
    )


def fetch_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    opener: dl.Opener | None = None,
) -> Path:
    """Download a named set's missing files now (for ``robustlab data download``)."""
    dataset = get_dataset(name)
    root = resolve_data_dir(data_dir)
    ensure_files(dataset, root, download=True, opener=opener)
    return root
