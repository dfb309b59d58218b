"""Microscope files: OME-TIFF fields read with tifffile (channel names -> roles), bioio as the other reader."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from protloc.data.catalog import open_dataset
from protloc.data.check import check_dataset
from protloc.data.io import read_sample
from protloc.data.microscope import (
    PlanePath,
    assign_roles,
    field_planes,
    parse_channel_map,
    read_field,
    read_header,
    read_plane,
    write_ome_tiff,
)
from protloc.errors import ConfigError, DataError
from tests.helpers import require, write_csv

NAMES = ["Hoechst 33342", "Alexa 488 antibody", "Tubulin", "Calreticulin"]


def _field(seed: int, size: int = 24, dtype: type = np.uint16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 60000, size=(4, size, size + 4)).astype(dtype)


def test_roles_come_from_channel_names_or_a_map() -> None:
    assert assign_roles(NAMES, where="f") == {"blue": 0, "green": 1, "red": 2, "yellow": 3}
    assert assign_roles(["C0", "C1", "C2", "C3"], where="f") == {"red": 0, "green": 1, "blue": 2, "yellow": 3}
    mapping = parse_channel_map("0=green,ch2=blue")
    assert assign_roles(["x", "y", "ch2"], mapping, where="f") == {"green": 0, "blue": 2}
    with pytest.raises(DataError, match="cannot tell the roles"):
        assign_roles(["foo", "bar"], where="f.ome.tif")
    with pytest.raises(DataError, match="both look like blue"):
        assign_roles(["DAPI", "Hoechst"], where="f")
    with pytest.raises(ConfigError, match="not a role"):
        parse_channel_map("DAPI=cyan")


def test_ome_tiff_fields_are_samples_with_roles_and_native_16_bit(tmp_path: Path) -> None:
    folder = tmp_path / "scope"
    folder.mkdir()
    fields = {f"w{i}": _field(i) for i in range(3)}
    for name, planes in fields.items():
        write_ome_tiff(folder / f"{name}.ome.tif", planes, NAMES)
    write_csv(tmp_path / "scope.csv", ["Id", "Target"], [("w0", "0"), ("w1", "25 2"), ("w2", "7")])
    catalog = open_dataset(tmp_path / "scope.csv")
    assert catalog.ids == ["w0", "w1", "w2"] and catalog.image_dir == folder
    image = read_sample(catalog.paths(1), ("red", "green", "blue", "yellow"), sample_id="w1")
    expected = np.rint(fields["w1"][[2, 1, 0, 3]].astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(image, expected)
    # a plane survives the trip to a worker process
    plane = catalog.paths(0)["blue"]
    again = pickle.loads(pickle.dumps(plane))
    assert isinstance(again, PlanePath) and again.plane == 0 and again.name == "w0.ome.tif"
    report = check_dataset(tmp_path / "scope.csv", workers=1)
    assert report.ok, report.problems
    # unlabelled folder of fields, with the user's map overriding the names
    swapped = open_dataset(folder, channel_map="Tubulin=blue,Hoechst 33342=red,Alexa 488 antibody=green,3=yellow")
    assert swapped.paths(0)["blue"].plane == 2


def test_bioio_reads_the_same_ome_tiff(tmp_path: Path) -> None:
    require("bioio_ome_tiff")
    path = write_ome_tiff(tmp_path / "f.ome.tif", _field(5), NAMES)
    by_tifffile, names = read_field(path, reader="tifffile")
    by_bioio, bio_names = read_field(path, reader="bioio")
    np.testing.assert_array_equal(by_tifffile, by_bioio)
    assert names == bio_names == NAMES
    assert set(field_planes(path)) == {"red", "green", "blue", "yellow"}


def test_vendor_files_without_their_reader_say_what_to_install(tmp_path: Path) -> None:
    fake = tmp_path / "plate.czi"
    fake.write_bytes(b"not a czi")
    with pytest.raises(DataError, match=r"plate.czi: (not readable with bioio|reading \.czi files needs)"):
        read_field(fake)


# ---------------------------------------------------------------------------------- one decoder, one budget (issue 20)


def test_planes_over_the_pixel_budget_are_refused_from_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A field whose planes exceed PROTLOC_MAX_PIXELS is refused before a pixel is decoded (a 4 x 12000^2 OME-TIFF
    of 0.6 MB was decoded in full: 1.6 GB)."""
    import tifffile

    path = write_ome_tiff(tmp_path / "big.ome.tif", _field(0, size=60), NAMES)  # planes of 64 x 60 px
    decoded: list[object] = []
    monkeypatch.setattr(tifffile.TiffFile, "asarray", lambda *a, **k: decoded.append(k) or np.zeros((60, 64)))
    monkeypatch.setenv("PROTLOC_MAX_PIXELS", str(64 * 60 - 1))
    for read in (read_header, read_field, lambda p: read_plane(PlanePath(p, 2)), field_planes):
        with pytest.raises(DataError, match=r"big.ome.tif: image of 64x60 px .* exceeds the decoding budget"):
            read(path)
    with pytest.raises(DataError, match="exceeds the decoding budget"):
        read_sample({"red": PlanePath(path, 2)}, ("red",))  # as the catalog's readers read a plane
    assert decoded == []  # not one page decoded


def test_one_plane_is_read_page_by_page_max_projected_over_z(tmp_path: Path) -> None:
    import tifffile

    rng = np.random.default_rng(3)
    stack = rng.integers(0, 60000, size=(1, 3, 4, 20, 24)).astype(np.uint16)  # T Z C Y X
    path = tmp_path / "z.ome.tif"
    tifffile.imwrite(path, stack, ome=True, metadata={"axes": "TZCYX", "Channel": {"Name": NAMES}})
    header = read_header(path)
    assert (header.channels, header.height, header.width, header.names) == (4, 20, 24, tuple(NAMES))
    for plane in range(4):
        np.testing.assert_array_equal(read_plane(PlanePath(path, plane)), stack[0, :, plane].max(axis=0))
    field, names = read_field(path)
    np.testing.assert_array_equal(field, stack[0].max(axis=0))
    assert names == NAMES
    pages: list[int] = []
    original = tifffile.TiffFile.asarray

    def counting(self: object, *args: object, **kwargs: object) -> object:
        pages.append(int(kwargs["key"]))  # type: ignore[call-overload]
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tifffile.TiffFile, "asarray", counting)
        read_plane(PlanePath(path, 1))
    assert len(pages) == 3  # the three Z pages of channel 1, nothing else
    with pytest.raises(DataError, match="has 4 channels, no plane 4"):
        read_plane(PlanePath(path, 4))


def test_a_header_claiming_100000_px_planes_is_refused_by_the_budget_not_by_memory(tmp_path: Path) -> None:
    """A small OME-TIFF whose tags and OME-XML claim 4 x 100000^2 planes: refused from the header with one line
    (it reached numpy's MemoryError before, issue 20 row 7)."""
    import time

    import tifffile

    path = write_ome_tiff(tmp_path / "liar.ome.tif", _field(0, size=60), NAMES)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        for page in tif.pages:
            page.tags["ImageWidth"].overwrite(100000)
            page.tags["ImageLength"].overwrite(100000)
        description = tif.pages[0].tags["ImageDescription"]
        description.overwrite(description.value.replace('SizeX="64"', 'SizeX="100000"').replace(
            'SizeY="60"', 'SizeY="100000"'))  # fmt: skip
    started = time.perf_counter()
    with pytest.raises(DataError, match=r"liar.ome.tif: image of 100000x100000 px .* exceeds the decoding budget"):
        read_sample(field_planes(path), ("red", "green", "blue", "yellow"))
    assert time.perf_counter() - started < 2
