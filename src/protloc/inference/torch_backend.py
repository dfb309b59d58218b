"""The PyTorch backend for prediction.

:class:`TorchBackend` wraps a network (a loaded package's, single model or ensemble, or one being trained) as the
batch -> probabilities function that the prediction core, :func:`protloc.inference.core.batch_probabilities`, runs
every batch through. :func:`predict_distributed` spreads a catalog over devices with Lightning and runs the same
core on each. The ONNX Runtime backend lives in :mod:`protloc.inference.core` and never imports torch; which backend
runs is decided in :mod:`protloc.inference.backends`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protloc.data.catalog import Catalog
from protloc.inference.core import Preprocessor, batch_probabilities, parse_tta
from protloc.model.card import ModelCard
from protloc.model.package import ModelPackage, load_package


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TorchBackend:
    """A network on a device, in eval mode, as ``batch (B, C, S, S) 0-1 floats -> probabilities``.

    Args:
        package: a loaded package (its network is built), or the network itself (0-1 pixels in, logits out).
        device: ``auto``, ``cpu``, ``cuda``...
        channels_last: run in the channels-last memory format (faster convolutions on GPUs and recent CPUs).
    """

    def __init__(
        self, package: ModelPackage | torch.nn.Module, *, device: str = "auto", channels_last: bool = True
    ) -> None:
        self.package = package if isinstance(package, ModelPackage) else None
        self.device = pick_device(device)
        self.channels_last = channels_last
        network = package.build_model() if isinstance(package, ModelPackage) else package.eval()
        network = network.to(self.device)
        self.model = network.to(memory_format=torch.channels_last) if channels_last else network

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        images = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        # Trained weights hold denormal floats that slow CPU kernels severalfold; flush them to zero during
        # the forward pass only (the setting is per thread and would otherwise leak into the caller's code).
        flush = self.device.type == "cpu" and torch.set_flush_denormal(True)
        try:
            return torch.sigmoid(self.model(images).float()).cpu().numpy()
        finally:
            if flush:
                torch.set_flush_denormal(False)


def load_torch_backend(model: str | Path, *, device: str = "auto") -> tuple[ModelCard, TorchBackend]:
    package = load_package(model)
    return package.card, TorchBackend(package, device=device)


# ----------------------------------------------------------------------------- multi-device prediction


class _FileDataset(torch.utils.data.Dataset):
    """Decodes samples from their files for Lightning's predict loop (uint8 inputs, as the runtime makes)."""

    def __init__(self, catalog: Catalog, preprocessor: Preprocessor) -> None:
        self.catalog = catalog
        self.preprocessor = preprocessor

    def __len__(self) -> int:
        return len(self.catalog)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample_id = self.catalog.ids[index]
        inputs = self.preprocessor.load(self.catalog.files[sample_id], sample_id)
        return {"inputs": torch.from_numpy(inputs), "index": index}


def predict_distributed(
    model: str | Path,
    catalog: Catalog,
    work_dir: Path,
    *,
    tta: str | Sequence[str] | None = None,
    tiles: int = 1,
    tile_aggregate: str = "max",
    batch_size: int = 16,
    workers: int | None = None,
    devices: int = 2,
    num_nodes: int = 1,
    accelerator: str = "auto",
) -> np.ndarray | None:
    """Predict ``catalog`` with Lightning's DDP over ``devices`` x ``num_nodes``, each rank running the prediction
    core on its shard; rank 0 merges the shards by sample index, so the result is identical to a single-process
    run. Returns the probabilities on rank 0, ``None`` on the other ranks."""
    import lightning as L

    from protloc.data.dataset import ShardSampler
    from protloc.utils import atomic_path, default_workers, usable_cpus

    package = load_package(model)
    card = package.card
    preprocessor = Preprocessor.from_card(card, tiles=tiles)
    views = parse_tta(tta)
    columns = card.num_classes

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.network = package.build_model()

        def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
            backend = TorchBackend(self.network, device=str(self.device), channels_last=False)
            inputs = batch["inputs"].cpu().numpy()  # (B, T, C, S, S) uint8
            probabilities = batch_probabilities(backend, inputs, views, tile_aggregate)
            return {"index": batch["index"].cpu().numpy(), "probabilities": probabilities}

    class Writer(L.pytorch.callbacks.BasePredictionWriter):
        def write_on_epoch_end(self, trainer: Any, pl_module: Any, predictions: Any, batch_indices: Any) -> None:
            index = np.concatenate([p["index"] for p in predictions]) if predictions else np.zeros(0, np.int64)
            rows = (
                np.concatenate([p["probabilities"] for p in predictions])
                if predictions
                else np.zeros((0, columns), np.float32)
            )
            with atomic_path(work_dir / f"rank{trainer.global_rank}.npz") as temp, temp.open("wb") as handle:
                np.savez(handle, index=index, probabilities=rows.astype(np.float32))

    class Data(L.LightningDataModule):
        def predict_dataloader(self) -> torch.utils.data.DataLoader:
            trainer = self.trainer
            assert trainer is not None
            sampler = ShardSampler(len(catalog), trainer.global_rank, trainer.world_size)
            count = default_workers() if workers is None else workers
            return torch.utils.data.DataLoader(
                _FileDataset(catalog, preprocessor), batch_size=batch_size, sampler=sampler, num_workers=count
            )

    work_dir.mkdir(parents=True, exist_ok=True)
    for stale in work_dir.glob("rank*.npz"):
        stale.unlink()
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy="ddp",
        callbacks=[Writer(write_interval="epoch")],
        logger=False,
        enable_progress_bar=False,
        use_distributed_sampler=False,
        enable_model_summary=False,
    )
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, usable_cpus() // max(1, trainer.num_devices)))
    trainer.predict(Module(), datamodule=Data(), return_predictions=False)
    trainer.strategy.barrier()
    if not trainer.is_global_zero:
        return None
    merged = np.zeros((len(catalog), columns), np.float32)
    seen = np.zeros(len(catalog), bool)
    for rank in range(trainer.world_size):
        with np.load(work_dir / f"rank{rank}.npz") as shard:
            merged[shard["index"]] = shard["probabilities"]
            seen[shard["index"]] = True
    if not seen.all():
        raise RuntimeError(f"{int((~seen).sum())} samples were not predicted by any rank")
    return merged
