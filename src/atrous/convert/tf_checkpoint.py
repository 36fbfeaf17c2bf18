"""Reading TensorFlow checkpoints (the official DeepLab model zoo's) with TensorFlow's own reader.

A model-zoo tarball (``deeplabv3_pascal_train_aug_2018_01_04.tar.gz``), the folder it extracts to,
or a checkpoint prefix (``.../model.ckpt``) all work. TensorFlow is an optional dependency
(``pip install 'atrous[tf]'``); only :func:`read_tf_checkpoint` needs it.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np

#: Checkpoint files inside a tarball; the frozen graph beside them is not needed.
_CHECKPOINT_PARTS = (".index", ".data-")


def _tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF's start-up chatter
    try:
        import tensorflow
    except ImportError:
        raise ImportError(
            "reading TensorFlow checkpoints needs TensorFlow: pip install 'atrous[tf]'"
        ) from None
    return tensorflow


def _prefix_in(folder: Path) -> str:
    """The one checkpoint prefix (``<prefix>.index``) under ``folder``."""
    indexes = sorted(folder.rglob("*.index"))
    if not indexes:
        raise ValueError(f"no TensorFlow checkpoint (*.index) under {folder}")
    if len(indexes) > 1:
        listed = ", ".join(str(p) for p in indexes[:4])
        raise ValueError(f"{folder} holds several checkpoints ({listed}); give one prefix")
    return str(indexes[0])[: -len(".index")]


def _extract_checkpoint(tarball: Path, target: Path) -> Path:
    """Extract only the checkpoint files of ``tarball`` (safely: no links, no absolute paths)."""
    try:
        with tarfile.open(tarball) as archive:
            members = [
                m
                for m in archive.getmembers()
                if m.isfile() and any(part in m.name for part in _CHECKPOINT_PARTS)
            ]
            archive.extractall(target, members=members, filter="data")
    except (tarfile.TarError, OSError) as error:
        raise ValueError(f"cannot read the tarball {tarball}: {error}") from None
    return target


def read_tf_checkpoint(source: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every variable of a TF checkpoint as ``name → array`` (optimizer slots included: the
    converter decides what to drop)."""
    tf = _tensorflow()
    path = Path(source)
    with tempfile.TemporaryDirectory(prefix="atrous-tf-") as scratch:
        if path.is_file() and tarfile.is_tarfile(path):
            prefix = _prefix_in(_extract_checkpoint(path, Path(scratch)))
        elif path.is_dir():
            prefix = _prefix_in(path)
        elif Path(f"{path}.index").is_file():
            prefix = str(path)
        else:
            raise FileNotFoundError(
                f"no TensorFlow checkpoint at {source}: give a model-zoo .tar.gz, the folder it "
                "extracts to, or a checkpoint prefix (…/model.ckpt)"
            )
        try:
            reader = tf.train.load_checkpoint(prefix)
        except Exception as error:
            raise ValueError(f"cannot read the TensorFlow checkpoint {prefix}: {error}") from None
        return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
