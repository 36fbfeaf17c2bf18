"""The TensorFlow-free checkpoint reader gives what TensorFlow's reader gives.

``fixtures/tf_bundle/`` (its README says how) holds a two-shard checkpoint written by TensorFlow
2.21 with the values TensorFlow read back; the real model-zoo index in ``../shared/real`` (its
README says where it came from) checks the reader on a checkpoint Google wrote.
"""

import itertools
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import FIXTURES, REAL_DATA, write_checkpoint

from atrous.convert.tf_checkpoint import read_index, read_tf_checkpoint

BUNDLE = FIXTURES / "tf_bundle"
ZOO_INDEX = REAL_DATA / "deeplabv3_mnv2_pascal_trainval_2018_01_29" / "model.ckpt-30000"


def test_a_two_shard_checkpoint_written_by_tensorflow_reads_bit_identical(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # any import of it fails
    ours = read_tf_checkpoint(BUNDLE / "model.ckpt")
    with np.load(BUNDLE / "model.ckpt.tf_values.npz") as stored:
        theirs = dict(stored)
    assert sorted(ours) == sorted(theirs)
    for name, reference in theirs.items():
        value = ours[name].astype(reference.dtype) if ours[name].dtype == object else ours[name]
        assert value.dtype == reference.dtype and value.shape == reference.shape, name
        assert value.tobytes() == reference.tobytes(), name
    shards, entries = read_index(BUNDLE / "model.ckpt")
    assert shards == 2 and {entry.shard for entry in entries.values()} == {0, 1}


def test_sliced_variables_are_refused_by_name():
    with pytest.raises(ValueError, match=r"sliced \(partitioned\) variables.*: part;"):
        read_tf_checkpoint(BUNDLE / "sliced.ckpt")


def test_corrupt_files_are_refused_clearly(tmp_path):
    prefix = write_checkpoint({"w": np.arange(6, dtype=np.float32)}, tmp_path / "model.ckpt")
    data = Path(f"{prefix}.data-00000-of-00001")
    data.write_bytes(data.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match=r"w in .* checksum does not match"):
        read_tf_checkpoint(prefix)
    data.unlink()
    with pytest.raises(FileNotFoundError, match=r"data file .*data-00000-of-00001 is missing"):
        read_tf_checkpoint(prefix)
    index = Path(f"{prefix}.index")
    index.write_bytes(index.read_bytes()[:-1])
    with pytest.raises(ValueError, match="not a TensorFlow checkpoint index"):
        read_tf_checkpoint(prefix)


def test_the_numpy_writer_round_trips_every_numeric_dtype(tmp_path):
    rng = np.random.default_rng(0)
    variables = {
        "a/weights": rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
        "global_step": np.array(30000, dtype=np.int64),
        "half": rng.standard_normal(3).astype(np.float16),
        "ints": rng.integers(-9, 9, (2, 2)).astype(np.int32),
        "empty": np.zeros((0, 2), dtype=np.float32),
    }
    read = read_tf_checkpoint(write_checkpoint(variables, tmp_path / "model.ckpt"))
    assert sorted(read) == sorted(variables)
    for name, value in variables.items():
        assert read[name].dtype == value.dtype and np.array_equal(read[name], value), name


def test_tensorflow_reads_what_the_numpy_writer_wrote(tmp_path):
    tf = pytest.importorskip("tensorflow", reason="the cross-check needs atrous[tf]")
    variables = {
        "MobilenetV2/Conv/weights": np.random.default_rng(1).standard_normal((3, 3, 3, 8)),
        "global_step": np.array(5, dtype=np.int64),
    }
    variables["MobilenetV2/Conv/weights"] = variables["MobilenetV2/Conv/weights"].astype("f4")
    reader = tf.train.load_checkpoint(str(write_checkpoint(variables, tmp_path / "model.ckpt")))
    for name, value in variables.items():
        assert np.array_equal(reader.get_tensor(name), value), name


@pytest.mark.skipif(not Path(f"{ZOO_INDEX}.index").is_file(), reason=f"no {REAL_DATA}")
def test_the_real_model_zoo_index_lists_all_437_variables():
    shards, entries = read_index(ZOO_INDEX)
    assert shards == 1 and len(entries) == 437
    kinds = Counter(
        "momentum" if name.endswith("/Momentum") else name.rsplit("/", 1)[-1] for name in entries
    )
    assert kinds["momentum"] == 164 and entries["global_step"].dtype == 9  # int64
    assert entries["global_step"].shape == ()
    assert sum(entry.dtype == 1 for entry in entries.values()) == 436  # float32
    assert entries["MobilenetV2/Conv/weights"].shape == (3, 3, 3, 32)
    assert entries["MobilenetV2/expanded_conv_16/project/weights"].shape == (1, 1, 960, 320)
    assert entries["logits/semantic/weights"].shape == (1, 1, 256, 21)
    assert entries["image_pooling/weights"].shape == (1, 1, 320, 256)
    # The tensors tile the data file: each starts where the one before ends.
    spans = sorted((entry.offset, entry.size) for entry in entries.values())
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(spans))
