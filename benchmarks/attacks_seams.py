"""The attacks of issue 20 (the seams between class schemes, the 2021 layout, cells, OME-TIFF, BioImage.IO and the
watcher), replayed by :mod:`bench_attacks` beside the earlier ones: what each got, its seconds and peak memory.

Each function returns rows ``{"attack", "status", "answer", "seconds", "peak_rss_mib"}``: for the service, the
peak RSS above idle of ``protloc serve`` on a 19-class (``hpa2021``) model; for commands, the peak RSS of the
command's process (its children summed), the temporary folder they run in written ``WORK``. Hostile files are
made the way the attacker made them and are small on disk (a 1 GiB run of zeros in a zip, a 4 x 12288^2 OME-TIFF
of about 1 MB, an 11000^2 label PNG of 0.2 MB).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

MiB = 2**20
NAMES = ["Hoechst 33342", "Alexa 488 antibody", "Tubulin", "Calreticulin"]
Row = dict[str, Any]


def _python() -> list[str]:
    return [sys.executable, "-m", "protloc"]


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def _line_named(result: subprocess.CompletedProcess[str]) -> str:
    """The first line naming a file's line (a check problem), else the last line."""
    said = [line.strip() for line in (result.stdout + result.stderr).splitlines() if " line " in line]
    return said[0] if said else _last_line(result)


def _write_field(folder: Path, sample_id: str, size: int, seed: int = 0) -> None:
    from protloc.data.io import CHANNELS, write_channel

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for channel in CHANNELS:
        write_channel(folder / f"{sample_id}_{channel}.png", rng.integers(0, 256, (size, size), dtype=np.uint8))


def _multipart(parts: list[tuple[str, str, bytes]], boundary: str = "seams0boundary") -> tuple[bytes, dict[str, str]]:
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for field, name, data in parts
    )
    return body + f"--{boundary}--\r\n".encode(), {"content-type": f"multipart/form-data; boundary={boundary}"}


# ------------------------------------------------------------------------------------- row 1: the service


def service_rows(service: Any, post: Callable[..., tuple[int, str]], work: Path) -> list[Row]:
    """Row 1: a 19-class model served; each answer must be a 200 whose JSON has 19 probabilities."""
    from bench_serve import make_sample
    from protloc.data.io import CHANNELS

    paths = make_sample(work / "field-2021", size=512)
    files = {c: p.read_bytes() for c, p in paths.items()}
    one, one_headers = _multipart([(c, f"{c}.png", files[c]) for c in CHANNELS])
    batch, batch_headers = _multipart([("files", f"{i}_{c}.png", files[c]) for i in ("A", "B") for c in CHANNELS])
    rows: list[Row] = []

    def attack(name: str, url: str, body: bytes, headers: dict[str, str]) -> None:
        import httpx

        with service.peak() as memory:
            started = time.perf_counter()
            response = httpx.post(url, content=body, headers=headers, timeout=300)
            seconds = time.perf_counter() - started
        if response.status_code == 200:
            data = response.json()
            results = data.get("results", [data])
            counts = sorted({len(r["probabilities"]) for r in results})
            cells = [len(c["probabilities"]) for r in results for c in (r.get("cells") or [])]
            answer = f"{len(results)} result(s), {counts} probabilities each, target {results[0]['target']!r}"
            if cells:
                answer += f"; {len(cells)} cells, {sorted(set(cells))} probabilities each"
        else:
            answer = response.text[:110]
        rows.append(
            {
                "attack": name,
                "status": response.status_code,
                "answer": answer,
                "seconds": round(seconds, 2),
                "peak_above_idle_mib": round(max(0, memory["peak"] - memory["idle"]) / MiB, 1),
            }
        )
        print(rows[-1], flush=True)

    attack("19-class (hpa2021) model: POST /predict", f"{service.url}/predict", one, one_headers)
    attack("19-class model: POST /predict/batch, 2 samples", f"{service.url}/predict/batch", batch, batch_headers)
    attack("19-class model: POST /predict?cells=true", f"{service.url}/predict?cells=true", one, one_headers)
    return rows


# ---------------------------------------------------------------------------------------- the commands


class Measured:
    """A command run with its peak RSS (children summed) sampled every 10 ms."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        import psutil

        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.peak = 0
        self._stop = threading.Event()
        handle = psutil.Process(self.process.pid)

        def sample() -> None:
            while not self._stop.is_set() and self.process.poll() is None:
                with contextlib.suppress(psutil.Error):
                    rss = sum(p.memory_info().rss for p in (handle, *handle.children(recursive=True)))
                    self.peak = max(self.peak, rss)
                time.sleep(0.01)

        self._sampler = threading.Thread(target=sample, daemon=True)
        self._sampler.start()

    def finish(self, timeout: float = 600) -> tuple[subprocess.CompletedProcess[str], float]:
        out, err = self.process.communicate(timeout=timeout)
        self._stop.set()
        self._sampler.join()
        seconds = time.perf_counter() - self.started
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, out, err), seconds


def command_rows(model: Path, work: Path, env: dict[str, str]) -> list[Row]:
    """Rows 2-10 (row 1 is the service's)."""
    rows: list[Row] = []

    def run(name: str, command: list[str], expect: Callable[[subprocess.CompletedProcess[str]], str] = _last_line):
        result, seconds = (measured := Measured(command, env)).finish()
        rows.append(
            {
                "attack": name,
                "status": f"exit {result.returncode}",
                "answer": expect(result).replace(str(work), "WORK")[:130],
                "seconds": round(seconds, 2),
                "peak_rss_mib": round(measured.peak / MiB, 1),
            }
        )
        print(rows[-1], flush=True)

    rows.append(_watcher_table_deleted(model, work, env))
    rows[-1]["answer"] = rows[-1]["answer"].replace(str(work), "WORK")
    print(rows[-1], flush=True)
    data = work / "one-field"
    _write_field(data, "f0", 64)
    for name, package in _bioimageio_packages(model, work).items():
        run(f"predict {name}", [*_python(), "predict", str(package), str(data), "--out", str(work / "bio-out")])
    onnx = ["--backend", "onnx"]  # as the earlier predict attacks: the refusal, not PyTorch's import, is measured
    for name, masks in _masks(work).items():
        command = [*_python(), "predict", str(model), str(data), *onnx, "--cells", "--masks", str(masks)]
        run(f"predict --cells --masks: {name}", [*command, "--out", str(work / f"cells-{masks.name}")])
    for name, folder in _ome_tiffs(work).items():
        run(f"predict {name}", [*_python(), "predict", str(model), str(folder), *onnx, "--out", str(work / "ome-out")])
    rows.append(_watcher_link_outside(model, work, env))
    rows[-1]["answer"] = rows[-1]["answer"].replace(str(work), "WORK")
    print(rows[-1], flush=True)
    for name, scheme in _hostile_schemes(work).items():
        run(f"check --classes: a class name {name}", [*_python(), "check", str(data.parent / "labelled"), "--classes",
                                                       str(scheme)])  # fmt: skip
    for name, root in _hostile_2021_labels(work).items():
        run(f"check: 2021 label {name}", [*_python(), "check", str(root)], _line_named)
    return rows


# ------------------------------------------------------------------------------------- rows 2 and 8: watch


def _table_rows(path: Path) -> list[str]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [row["field"] for row in csv.DictReader(handle)]


def _watch(model: Path, folder: Path, out: Path, env: dict[str, str], *extra: str) -> Measured:
    command = [*_python(), "watch", str(folder), "--model", str(model), "--out", str(out), "--backend", "onnx"]
    return Measured([*command, "--settle", "0.3", *extra], env)


def _wait_rows(path: Path, count: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while len(_table_rows(path)) < count and time.monotonic() < deadline:
        time.sleep(0.2)


def _watcher_table_deleted(model: Path, work: Path, env: dict[str, str]) -> Row:
    """Row 2: results.csv deleted while the watcher runs, then more fields: none may be lost."""
    folder, out = work / "watched", work / "watch-out"
    for i in range(3):
        _write_field(folder, f"a{i}", 128, seed=i)
    watcher = _watch(model, folder, out, env)
    _wait_rows(out / "results.csv", 3)
    (out / "results.csv").unlink()
    for i in range(3):
        _write_field(folder, f"b{i}", 128, seed=10 + i)
    _wait_rows(out / "results.csv", 6)
    watcher.process.send_signal(signal.SIGINT)
    result, seconds = watcher.finish()
    table = _table_rows(out / "results.csv")
    done = [json.loads(line)["field"] for line in (out / "journal.jsonl").read_text().splitlines()]
    again = subprocess.run(
        [*_python(), "watch", str(folder), "--model", str(model), "--out", str(out), "--backend", "onnx", "--once"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    said = " ".join(result.stderr.split())
    notice = said[said.find("results.csv was removed") :].split(";")[0] if "was removed" in said else "no notice"
    redone = again.stdout.strip().splitlines()[-1].split(" in ")[0] if again.stdout.strip() else again.stderr[-80:]
    answer = f"{len(set(table))} of 6 fields in results.csv, {len(set(done))} journalled; {notice}; restart: {redone}"
    return {
        "attack": "watch: results.csv deleted while running, then 3 more fields",
        "status": f"exit {result.returncode}",
        "answer": answer[:160],
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(watcher.peak / MiB, 1),
    }


def _watcher_link_outside(model: Path, work: Path, env: dict[str, str]) -> Row:
    """Row 8: a field whose files are links to files outside the watched folder."""
    from protloc.data.io import CHANNELS

    folder, outside = work / "watched-links", work / "private"
    _write_field(outside, "secret", 64)
    folder.mkdir()
    for channel in CHANNELS:
        (folder / f"linked_{channel}.png").symlink_to(outside / f"secret_{channel}.png")
    watcher = _watch(model, folder, work / "links-out", env, "--once")
    result, seconds = watcher.finish()
    with (work / "links-out" / "rejected.csv").open(newline="") as handle:
        reasons = [row["reason"] for row in csv.DictReader(handle)]
    classified = _table_rows(work / "links-out" / "results.csv")
    return {
        "attack": "watch: a field of links to files outside the folder",
        "status": f"exit {result.returncode}",
        "answer": (f"{len(classified)} classified; rejected.csv: " + (reasons[0] if reasons else "(none)"))[:160],
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(watcher.peak / MiB, 1),
    }


# ---------------------------------------------------------------------------------- rows 3 and 4: packages


def _rdf(card: dict[str, Any], source: str, sha256: str | None) -> str:
    import yaml

    onnx: dict[str, Any] = {"source": source, "opset_version": 18}
    if sha256:
        onnx["sha256"] = sha256
    return yaml.safe_dump(
        {
            "type": "model",
            "format_version": "0.5.4",
            "name": "hostile",
            "inputs": [{"id": "pixels", "preprocessing": [{"id": "scale_linear", "kwargs": {"gain": 1 / 255}}]}],
            "outputs": [{"id": "probabilities", "postprocessing": [{"id": "sigmoid"}]}],
            "weights": {"onnx": onnx},
            "config": {"protloc": {"card": card}},
        }
    )


def _zeros(total: int, chunk: int = MiB) -> Iterator[bytes]:
    block = bytes(chunk)
    for _ in range(total // chunk):
        yield block


def _bioimageio_packages(model: Path, work: Path) -> dict[str, Path]:
    from protloc.model.card import read_card

    card = read_card(model).to_dict()
    digest = hashlib.sha256()
    for block in _zeros(1 << 30):
        digest.update(block)
    bomb = work / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("rdf.yaml", _rdf(card, "weights.onnx", digest.hexdigest()))
        with archive.open("weights.onnx", "w", force_zip64=True) as member:
            for block in _zeros(1 << 30):
                member.write(block)
    packages = {
        f"bomb.zip: weights.onnx = 1 GiB of zeros, sha256 right ({bomb.stat().st_size / MiB:.0f} MiB zip)": bomb
    }
    outside = work / "outside"
    outside.mkdir()
    (outside / "evil.onnx").write_bytes((model / "model.onnx").read_bytes())
    for name, source in (("/dev/zero", "/dev/zero"), ("../../outside/evil.onnx", "../../outside/evil.onnx")):
        folder = work / "pkg" / name.strip("/").replace("/", "_").replace(".", "")
        folder.mkdir(parents=True)
        (folder / "rdf.yaml").write_text(_rdf(card, source, None))
        packages[f"unpacked package, source {name}, no sha256"] = folder
    return packages


# ---------------------------------------------------------------------------------- rows 5 and 6: masks


def _masks(work: Path) -> dict[str, Path]:
    from tests.helpers import zero_png

    from protloc.cells.masks import write_labels

    huge = work / "masks-huge"
    huge.mkdir()
    (huge / "f0_cells.png").write_bytes(zero_png(11000, 11000))
    big = work / "masks-128"
    big.mkdir()
    labels = np.zeros((128, 128), np.int32)
    labels[10:60, 10:60], labels[70:120, 64:128] = 1, 2
    write_labels(big / "f0_cells.png", labels)
    return {"a label PNG declaring 11000x11000 (0.2 MB)": huge, "128 px masks for a 64 px field": big}


# ------------------------------------------------------------------------------------------ row 7: OME-TIFF


def _ome_tiffs(work: Path) -> dict[str, Path]:
    import tifffile

    big = work / "ome-big"
    big.mkdir()
    tile = np.zeros((512, 512), np.uint16)
    tiles = (tile for _ in range(4 * 24 * 24))
    tifffile.imwrite(
        big / "f0.ome.tif", tiles, shape=(4, 12288, 12288), dtype=np.uint16, tile=(512, 512), compression="zlib",
        ome=True, metadata={"axes": "CYX", "Channel": {"Name": NAMES}},
    )  # fmt: skip
    size = (big / "f0.ome.tif").stat().st_size / MiB
    liar = work / "ome-liar"
    liar.mkdir()
    path = liar / "f0.ome.tif"
    tifffile.imwrite(
        path, np.zeros((4, 64, 64), np.uint16), ome=True, metadata={"axes": "CYX", "Channel": {"Name": NAMES}}
    )
    with tifffile.TiffFile(path, mode="r+b") as tif:  # the header claims what the file does not hold
        for page in tif.pages:
            page.tags["ImageWidth"].overwrite(100000)
            page.tags["ImageLength"].overwrite(100000)
        description = tif.pages[0].tags["ImageDescription"]
        description.overwrite(description.value.replace('"64"', '"100000"'))
    return {
        f"OME-TIFF 4 x 12288^2 ({size:.1f} MB, zlib tiles)": big,
        "OME-TIFF whose header claims 4 x 100000^2": liar,
    }


# ------------------------------------------------------------------------------------ rows 9 and 10: labels


def _hostile_schemes(work: Path) -> dict[str, Path]:
    labelled = work / "labelled"
    _write_field(labelled / "train", "a", 32)
    (labelled / "train.csv").write_text("Id,Target\na,0\n")
    schemes = {}
    for name, hostile in (
        ("with a newline", "Golgi\napparatus"),
        ("with ','", "Golgi, apparatus"),
        ("with '|'", "Golgi|apparatus"),
        ("with ';'", "Golgi; apparatus"),
        ("starting with '='", '=HYPERLINK("http://evil.example")'),
    ):
        path = work / f"scheme-{len(schemes)}.json"
        path.write_text(json.dumps({"name": "mine", "classes": ["Nucleus", hostile, "Cytosol", "ER", "Other"]}))
        schemes[name] = path
    return schemes


def _hostile_2021_labels(work: Path) -> dict[str, Path]:
    roots = {}
    for name, label in (("'\u0661' (an Arabic-Indic one)", "\u0661"), ("'1||2'", "1||2")):
        root = work / f"h21-{len(roots)}"
        _write_field(root / "train", "a", 32)
        _write_field(root / "train", "b", 32, seed=1)
        (root / "train.csv").write_text(f"ID,Label\na,0|16\nb,{label}\n", encoding="utf-8")
        roots[name] = root
    return roots
