from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from protloc.data.io import (
    CHANNELS,
    parse_channels,
    read_channel,
    read_sample,
    read_stack,
    resize_plane,
    split_channel_filename,
    stack_to_chw,
    to_uint8,
    write_channel,
)
from protloc.errors import ConfigError, DataError


@pytest.fixture
def plane() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(48, 40), dtype=np.int64).astype(np.uint8)


@pytest.mark.parametrize("ext", [".png", ".tif", ".tiff"])
def test_8bit_lossless_formats_read_back_exactly(tmp_path: Path, plane: np.ndarray, ext: str) -> None:
    path = tmp_path / f"a_green{ext}"
    write_channel(path, plane)
    got = read_channel(path)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, plane)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_maps_linearly_onto_8bit(tmp_path: Path, plane: np.ndarray, ext: str) -> None:
    # An 8-bit image stored as 16-bit (v * 257) comes back exactly; full scale maps to 255.
    path = tmp_path / f"a_green{ext}"
    write_channel(path, plane.astype(np.uint16) * 257)
    np.testing.assert_array_equal(read_channel(path), plane)
    write_channel(path, np.array([[0, 65535], [32768, 257]], np.uint16))
    np.testing.assert_array_equal(read_channel(path), [[0, 255], [128, 1]])


def test_16bit_with_declared_12_bit_depth(tmp_path: Path) -> None:
    path = tmp_path / "a_green.tif"
    write_channel(path, np.array([[0, 4095], [2048, 16]], np.uint16))
    np.testing.assert_array_equal(read_channel(path, bit_depth=12), [[0, 255], [128, 1]])
    # the default (16 significant bits) would make the same file 16x darker
    assert read_channel(path).max() == 16


def test_full_size_16bit_tiff(tmp_path: Path) -> None:
    big = np.zeros((2048, 2048), np.uint16)
    big[100:200, 300:400] = 65535
    path = tmp_path / "x_blue.tif"
    tifffile.imwrite(path, big, compression="zlib")
    got = read_channel(path)
    assert got.shape == (2048, 2048)
    assert got[150, 350] == 255 and got[0, 0] == 0


def test_jpg_grayscale_reads_close(tmp_path: Path) -> None:
    smooth = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8), (0, 0), 4)
    path = tmp_path / "a_red.jpg"
    write_channel(path, smooth)
    got = read_channel(path)
    assert got.shape == smooth.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - smooth).mean() < 2.0


def test_hpa_v18_tinted_colour_jpg_is_reduced_to_its_signal(tmp_path: Path) -> None:
    # HPA v18 channel JPGs are RGB tinted: yellow = red + green planes. The max over planes is the signal.
    signal = np.zeros((64, 64), np.uint8)
    signal[16:48, 16:48] = 200
    rgb = np.stack([signal, signal, np.zeros_like(signal)], axis=-1)  # yellow tint
    path = tmp_path / "a_yellow.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 98])
    got = read_channel(path)
    assert got.ndim == 2
    assert abs(int(got[32, 32]) - 200) <= 4 and got[2, 2] <= 4
    blue = np.stack([np.zeros_like(signal), np.zeros_like(signal), signal], axis=-1)
    path = tmp_path / "a_blue.png"
    cv2.imwrite(str(path), cv2.cvtColor(blue, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(read_channel(path), signal)


def test_float_images_are_scaled(tmp_path: Path) -> None:
    np.testing.assert_array_equal(to_uint8(np.array([[0.0, 1.0], [0.5, np.nan]], np.float32)), [[0, 255], [128, 0]])
    np.testing.assert_array_equal(to_uint8(np.array([[0.0, 300.0], [12.4, 2.0]])), [[0, 255], [12, 2]])


def test_corrupt_empty_and_missing_files_raise_data_errors(tmp_path: Path, plane: np.ndarray) -> None:
    good = tmp_path / "a_red.png"
    write_channel(good, plane)
    truncated = tmp_path / "b_red.png"
    truncated.write_bytes(good.read_bytes()[:60])
    empty = tmp_path / "c_red.png"
    empty.write_bytes(b"")
    text = tmp_path / "d_red.tif"
    text.write_text("not a tiff")
    for path, fragment in [
        (truncated, "corrupt"),
        (empty, "empty"),
        (text, "TIFF"),
        (tmp_path / "z_red.png", "not found"),
    ]:
        with pytest.raises(DataError, match=fragment) as info:
            read_channel(path)
        assert str(path) in str(info.value)


def _write_sample(folder: Path, sample_id: str, planes: dict[str, np.ndarray], ext: str = ".png") -> dict[str, Path]:
    paths = {}
    for channel, data in planes.items():
        paths[channel] = folder / f"{sample_id}_{channel}{ext}"
        write_channel(paths[channel], data)
    return paths


def test_read_sample_stacks_in_the_chosen_order(tmp_path: Path) -> None:
    planes = {c: np.full((16, 16), i * 10 + 1, np.uint8) for i, c in enumerate(CHANNELS)}
    paths = _write_sample(tmp_path, "s", planes)
    rgby = read_sample(paths)
    assert rgby.shape == (4, 16, 16) and rgby.dtype == np.uint8
    assert [int(rgby[i, 0, 0]) for i in range(4)] == [1, 11, 21, 31]
    green = read_sample(paths, parse_channels("green"))
    assert green.shape == (1, 16, 16) and green[0, 0, 0] == 11
    rgb = read_sample(paths, parse_channels("rgb"))
    assert [int(rgb[i, 0, 0]) for i in range(3)] == [1, 11, 21]
    reordered = read_sample(paths, parse_channels("yellow,blue"))
    assert [int(reordered[i, 0, 0]) for i in range(2)] == [31, 21]


def test_mixed_formats_and_bit_depths_in_one_sample(tmp_path: Path) -> None:
    value = np.full((8, 8), 100, np.uint8)
    write_channel(tmp_path / "s_red.png", value)
    write_channel(tmp_path / "s_green.tif", value.astype(np.uint16) * 257)
    write_channel(tmp_path / "s_blue.png", value.astype(np.uint16) * 257)
    write_channel(tmp_path / "s_yellow.tif", value)
    paths = {c: next(tmp_path.glob(f"s_{c}.*")) for c in CHANNELS}
    np.testing.assert_array_equal(read_sample(paths), np.full((4, 8, 8), 100, np.uint8))


def test_channel_size_mismatch_names_sample_and_sizes(tmp_path: Path) -> None:
    planes = {c: np.zeros((16, 16), np.uint8) for c in CHANNELS}
    planes["blue"] = np.zeros((16, 20), np.uint8)
    paths = _write_sample(tmp_path, "s1", planes)
    with pytest.raises(DataError, match=r"sample s1: channel sizes differ \(.*blue 20x16"):
        read_sample(paths, sample_id="s1")
    # resizing to a common size is allowed
    assert read_sample(paths, size=8).shape == (4, 8, 8)


def test_missing_channel_names_sample_and_channel(tmp_path: Path) -> None:
    paths = _write_sample(tmp_path, "s2", {"red": np.zeros((8, 8), np.uint8)})
    with pytest.raises(DataError, match="sample s2: missing green channel"):
        read_sample(paths, sample_id="s2")


def test_resize_shrinks_with_area_average() -> None:
    checker = np.kron([[0, 255], [255, 0]], np.ones((4, 4))).astype(np.uint8)
    assert resize_plane(checker, 2).tolist() == [[0, 255], [255, 0]]
    assert resize_plane(checker, (4, 2)).shape == (4, 2)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("rgby", CHANNELS),
        ("RGB", ("red", "green", "blue")),
        ("green", ("green",)),
        ("gb", ("green", "blue")),
        ("yellow, red", ("yellow", "red")),
        (["blue", "green"], ("blue", "green")),
    ],
)
def test_parse_channels(spec: str, expected: tuple[str, ...]) -> None:
    assert parse_channels(spec) == expected


@pytest.mark.parametrize("spec", ["purple", "rr", "red,red", "", "rgbx"])
def test_parse_channels_rejects_bad_choices(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_channels(spec)


def test_split_channel_filename() -> None:
    assert split_channel_filename("00070df0-bbc3-11e8_green.png") == ("00070df0-bbc3-11e8", "green")
    assert split_channel_filename("10580_1610_C1_1_yellow.JPG") == ("10580_1610_C1_1", "yellow")
    assert split_channel_filename("x_green.gif") is None
    assert split_channel_filename("x_purple.png") is None
    assert split_channel_filename("notes.txt") is None


def test_read_stack_npy_and_tiff_in_both_layouts(tmp_path: Path) -> None:
    chw = np.stack([np.full((12, 10), v, np.uint8) for v in (1, 2, 3, 4)])
    np.save(tmp_path / "s.npy", chw)
    np.testing.assert_array_equal(read_stack(tmp_path / "s.npy"), chw)
    tifffile.imwrite(tmp_path / "s.tif", np.moveaxis(chw, 0, -1).astype(np.uint16) * 257)
    np.testing.assert_array_equal(read_stack(tmp_path / "s.tif"), chw)
    green = read_stack(tmp_path / "s.npy", ("green",))
    assert green.shape == (1, 12, 10) and green[0, 0, 0] == 2
    with pytest.raises(DataError, match="expected 4 channels"):
        stack_to_chw(np.zeros((3, 16, 16), np.uint8))
    with pytest.raises(DataError, match=r"\.npy or \.tif"):
        (tmp_path / "s.png").write_bytes(b"x")
        read_stack(tmp_path / "s.png")
