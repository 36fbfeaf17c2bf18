"""Every command line ``atrous check-data`` suggests is accepted as printed, and applying it
makes check-data pass: for 0/255 masks (``--data.task binary``) and for RGB colour masks
without a classes.yaml (``--fix OUT``, then the command it prints for the copy)."""

import re
import shlex

import numpy as np
from helpers import make_binary_folder, random_image, write_rgb
from jsonargparse import auto_parser

from atrous.cli import COMMANDS, main
from atrous.data import FolderDataset

COMMAND = re.compile(r"(?:check again with|write the copy with|check it with): (atrous .*)$")


def suggested(out: str) -> list[list[str]]:
    """The command lines check-data printed, as argv lists (without ``atrous``)."""
    return [shlex.split(m.group(1))[1:] for line in out.splitlines() if (m := COMMAND.search(line))]


def run(capsys, argv: list[str]) -> tuple[int, str]:
    status = main([*argv, "--progress", "false"])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def test_binary_masks_suggestion_pasted_back_passes(tmp_path, capsys):
    make_binary_folder(tmp_path, "[background, object]", 255)
    status, out = run(
        capsys, ["check-data", "--data.dataset", "folder", "--data.root", str(tmp_path)]
    )
    assert status == 1
    (command,) = suggested(out)
    assert command[-2:] == ["--data.task", "binary"]
    status, out = run(capsys, command)
    assert status == 0, out
    parsed = auto_parser(COMMANDS).parse_args(["train", *command[1:]])  # train takes it too
    assert parsed.train.data.task == "binary"


def test_rgb_masks_without_classes_yaml_fixed_as_suggested(tmp_path, capsys):
    rng = np.random.default_rng(6)
    colours = np.array([(0, 0, 0), (250, 10, 10), (10, 10, 250), (10, 250, 10)])
    indices = [rng.integers(0, 4, (10, 12)) for _ in range(3)]
    for i, index in enumerate(indices):
        write_rgb(tmp_path / "data" / "images" / f"a{i}.png", random_image(rng, 10, 12))
        write_rgb(tmp_path / "data" / "masks" / f"a{i}.png", colours[index])
    root = ["--data.dataset", "folder", "--data.root", str(tmp_path / "data")]
    status, out = run(capsys, ["check-data", *root, "--data.train_split", ""])
    assert status == 1
    counts = np.bincount(np.concatenate([i.ravel() for i in indices]), minlength=4)
    for colour, count in zip(colours.tolist(), counts, strict=True):
        assert f"{tuple(colour)}: {count} px" in out  # the colours found, pixels each
    (command,) = suggested(out)
    assert command[-2:] == ["--fix", "OUT"]
    out_dir = tmp_path / "fixed"
    status, out = run(capsys, [*command[:-1], str(out_dir)])
    (again,) = suggested(out)[-1:]
    status, out = run(capsys, again)
    assert status == 0, out
    fixed = FolderDataset(out_dir, None)
    order = np.array(sorted(range(4), key=lambda i: tuple(colours[i])))  # by colour value
    assert fixed.palette == tuple(tuple(c) for c in colours[order].tolist())
    assert fixed.classes == tuple("colour_{}_{}_{}".format(*c) for c in colours[order].tolist())
    rank = np.argsort(order)  # colour i is palette entry rank[i]
    for i, index in enumerate(indices):
        np.testing.assert_array_equal(fixed[i][1].numpy(), rank[index])
    assert not (tmp_path / "data" / "classes.yaml").exists()  # the originals are only read
