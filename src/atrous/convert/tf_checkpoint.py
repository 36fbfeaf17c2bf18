"""Reading TensorFlow checkpoints (the official DeepLab model zoo's) without TensorFlow.

A model-zoo tarball (``deeplabv3_pascal_train_aug_2018_01_04.tar.gz``), the folder it extracts to,
or a checkpoint prefix (``.../model.ckpt``) all work.

A checkpoint is a tensor bundle: ``<prefix>.index`` is a LevelDB-format table (SSTable) whose
entries map each variable name to a ``BundleEntryProto`` (dtype, shape, shard, offset, size,
crc32c); the entry with the empty key holds the ``BundleHeaderProto`` (shard count, endianness).
``<prefix>.data-0000k-of-0000n`` hold the tensors' raw little-endian bytes. This module reads both
with the standard library and numpy, decoding the few protobuf fields by hand, so converting needs
neither TensorFlow (a large install whose native libraries have crashed beside torchvision's in one
process) nor protobuf stubs. The PyPI package ``tensorflow-checkpoint-reader`` (last release
2023) was weighed and not used: it pins ``protobuf<3.19``, which the ONNX stack here cannot share,
and carries ~25 000 lines of ported TensorFlow for what these ~200 lines do.

TensorFlow writes bundle index blocks uncompressed; a snappy-compressed table, a big-endian
bundle and sliced (partitioned) variables are refused with a message. The index blocks'
checksums are always verified; each tensor's checksum is verified when the optional
``google-crc32c`` package is installed (pure-Python crc32c would take ~25 s on a 160 MB
checkpoint), and its byte size must match its dtype and shape in any case.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atrous.convert.archive import extract_archive

#: Checkpoint files inside a tarball; the frozen graph beside them is not needed.
CHECKPOINT_PARTS = (".index", ".data-")
#: The LevelDB table magic number, the last 8 bytes of every ``.index``.
TABLE_MAGIC = 0xDB4775248B80FB57
#: TensorFlow ``DataType`` enum values → numpy dtypes (the numeric ones; 7 is DT_STRING).
DTYPES = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<i4"),
    4: np.dtype("u1"),
    5: np.dtype("<i2"),
    6: np.dtype("i1"),
    9: np.dtype("<i8"),
    10: np.dtype("?"),
    17: np.dtype("<u2"),
    19: np.dtype("<f2"),
    22: np.dtype("<u4"),
    23: np.dtype("<u8"),
}
DT_STRING = 7


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as LevelDB and tensor bundles use (pure Python)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The stored form of ``data``'s checksum."""
    return mask_crc(crc32c(data))


def mask_crc(crc: int) -> int:
    """LevelDB's masking of a stored CRC (so that CRCs of data holding CRCs stay strong)."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A base-128 varint at ``pos``: (value, position after it)."""
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(message: bytes) -> list[tuple[int, int | bytes]]:
    """A protobuf message's (field number, value) pairs: ints for varint and fixed fields,
    bytes for length-delimited ones."""
    out, pos = [], 0
    while pos < len(message):
        key, pos = _varint(message, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(message, pos)
        elif wire == 2:
            length, pos = _varint(message, pos)
            value, pos = message[pos : pos + length], pos + length
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, pos = int.from_bytes(message[pos : pos + width], "little"), pos + width
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((number, value))
    return out


@dataclass(frozen=True)
class BundleEntry:
    """Where one tensor lives: dtype (TF enum), shape, shard file and byte range."""

    dtype: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int
    sliced: bool


def _shape(message: bytes) -> tuple[int, ...]:
    dims = []
    for number, dim in _fields(message):
        if number == 2:  # TensorShapeProto.dim: Dim.size is field 1
            size = dict(_fields(dim)).get(1, 0)
            dims.append(size - (1 << 64) if size >= 1 << 63 else size)
    return tuple(dims)


def _entry(message: bytes) -> BundleEntry:
    values = {"dtype": 0, "shape": (), "shard": 0, "offset": 0, "size": 0, "crc32c": 0}
    values["sliced"] = False
    names = {1: "dtype", 3: "shard", 4: "offset", 5: "size", 6: "crc32c"}
    for number, value in _fields(message):
        if number in names:
            values[names[number]] = value
        elif number == 2:
            values["shape"] = _shape(value)
        elif number == 7:
            values["sliced"] = True
    return BundleEntry(**values)


def _block(data: bytes, offset: int, size: int, path: Path) -> bytes:
    """The contents of the table block at ``offset``, its trailer (type, checksum) checked."""
    contents, kind = data[offset : offset + size], data[offset + size]
    stored = int.from_bytes(data[offset + size + 1 : offset + size + 5], "little")
    if masked_crc32c(data[offset : offset + size + 1]) != stored:
        raise ValueError(f"{path} is corrupt: a block checksum does not match")
    if kind != 0:
        raise ValueError(
            f"{path} has compressed blocks (type {kind}); TensorFlow writes checkpoint indexes "
            "uncompressed, so this is not a tensor bundle atrous can read"
        )
    return contents


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """The (key, value) pairs of one table block (keys share prefixes with their predecessor)."""
    restarts = int.from_bytes(block[-4:], "little")
    end, pos, key, out = len(block) - 4 * (restarts + 1), 0, b"", []
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        out.append((key, block[pos : pos + length]))
        pos += length
    return out


def _table(path: Path) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a LevelDB table file, in key order."""
    data = path.read_bytes()
    if len(data) < 48 or int.from_bytes(data[-8:], "little") != TABLE_MAGIC:
        raise ValueError(f"{path} is not a TensorFlow checkpoint index (no table footer)")
    footer = data[-48:-8]
    _, pos = _varint(footer, _varint(footer, 0)[1])  # skip the metaindex handle
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    out = []
    for _, handle in _block_entries(_block(data, index_offset, index_size, path)):
        offset, pos = _varint(handle, 0)
        size, _ = _varint(handle, pos)
        out.extend(_block_entries(_block(data, offset, size, path)))
    return out


def read_index(prefix: str | os.PathLike) -> tuple[int, dict[str, BundleEntry]]:
    """The shard count and every tensor's entry of ``<prefix>.index``."""
    path = Path(f"{prefix}.index")
    entries: dict[str, BundleEntry] = {}
    shards = None
    for key, value in _table(path):
        if key == b"":  # BundleHeaderProto: num_shards (1), endianness (2: 1 is big)
            header = dict(_fields(value))
            if header.get(2, 0) != 0:
                raise ValueError(f"{path} is a big-endian bundle; only little-endian is supported")
            shards = header.get(1, 0)
        elif not key.startswith(b"\x00"):  # keys from 0x00 hold the slices of sliced variables
            entries[key.decode()] = _entry(value)
    if shards is None:
        raise ValueError(f"{path} has no bundle header: not a TensorFlow V2 checkpoint")
    sliced = [name for name, entry in entries.items() if entry.sliced]
    if sliced:
        raise ValueError(
            f"{path} holds sliced (partitioned) variables, which atrous does not read: "
            f"{', '.join(sliced[:5])}; save the checkpoint without partitioning"
        )
    return shards, entries


def _string_tensor(raw: bytes, count: int, shape: tuple[int, ...]) -> np.ndarray:
    """A DT_STRING tensor: ``count`` varint lengths, a 4-byte checksum, then the bytes."""
    lengths, pos = [], 0
    for _ in range(count):
        length, pos = _varint(raw, pos)
        lengths.append(length)
    pos += 4
    values = []
    for length in lengths:
        values.append(raw[pos : pos + length])
        pos += length
    return np.array(values, dtype=object).reshape(shape)


def _check_crc(name: str, entry: BundleEntry, raw: bytes, source: Path) -> None:
    """Compare a tensor's bytes with its stored checksum, where a fast crc32c is installed."""
    try:
        import google_crc32c
    except ImportError:
        return
    if mask_crc(google_crc32c.value(raw)) != entry.crc32c:
        raise ValueError(f"{name} in {source} is corrupt: its checksum does not match")


def _tensor(name: str, entry: BundleEntry, raw: bytes, source: Path) -> np.ndarray:
    count = int(np.prod(entry.shape, dtype=np.int64))
    if entry.dtype == DT_STRING:  # its checksum covers the lengths too (not checked)
        return _string_tensor(raw, count, entry.shape)
    _check_crc(name, entry, raw, source)
    dtype = DTYPES.get(entry.dtype)
    if dtype is None:
        raise ValueError(f"{name} in {source} has TensorFlow dtype {entry.dtype}, not supported")
    if len(raw) != count * dtype.itemsize:
        raise ValueError(
            f"{name} in {source}: {len(raw)} bytes for {count} × {dtype} values (truncated file?)"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(entry.shape).astype(dtype.newbyteorder("="))


def read_bundle(prefix: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of the bundle at ``prefix`` (``<prefix>.index`` + its data shards)."""
    shards, entries = read_index(prefix)
    out: dict[str, np.ndarray] = {}
    for shard in range(shards):
        path = Path(f"{prefix}.data-{shard:05d}-of-{shards:05d}")
        names = [name for name, entry in entries.items() if entry.shard == shard]
        if not names:
            continue
        if not path.is_file():
            raise FileNotFoundError(f"the checkpoint's data file {path} is missing")
        with path.open("rb") as file:
            for name in names:
                entry = entries[name]
                file.seek(entry.offset)
                out[name] = _tensor(name, entry, file.read(entry.size), path)
    return out


def _prefix_in(folder: Path) -> str:
    """The one checkpoint prefix (``<prefix>.index``) under ``folder``."""
    indexes = sorted(folder.rglob("*.index"))
    if not indexes:
        raise ValueError(f"no TensorFlow checkpoint (*.index) under {folder}")
    if len(indexes) > 1:
        listed = ", ".join(str(p) for p in indexes[:4])
        raise ValueError(f"{folder} holds several checkpoints ({listed}); give one prefix")
    return str(indexes[0])[: -len(".index")]


def read_tf_checkpoint(source: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every variable of a TF checkpoint as ``name → array`` (optimizer slots included: the
    converter decides what to drop)."""
    path = Path(source)
    if path.is_file() and tarfile.is_tarfile(path):
        with tempfile.TemporaryDirectory(prefix="atrous-tf-") as scratch:
            return _read_prefix(_prefix_in(extract_archive(path, Path(scratch), CHECKPOINT_PARTS)))
    if path.is_dir():
        return _read_prefix(_prefix_in(path))
    if Path(f"{path}.index").is_file():
        return _read_prefix(str(path))
    raise FileNotFoundError(
        f"no TensorFlow checkpoint at {source}: give a model-zoo .tar.gz, the folder it "
        "extracts to, or a checkpoint prefix (…/model.ckpt)"
    )


def _read_prefix(prefix: str) -> dict[str, np.ndarray]:
    """The variables of the checkpoint at ``prefix``; a corrupt index is one clear error."""
    try:
        return read_bundle(prefix)
    except (IndexError, UnicodeDecodeError) as error:
        raise ValueError(f"{prefix}.index is corrupt ({error})") from None
