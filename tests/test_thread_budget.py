"""The one thread budget: decoding workers plus the network's threads fit the usable CPUs, explicit settings win,
and decoding ahead on a thread changes nothing but the time."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from protloc import utils
from protloc.inference import budget as budget_module
from protloc.inference.budget import plan_budget, plan_cells, plan_service
from protloc.inference.core import predict_catalog
from protloc.inference.predict import open_for_prediction
from protloc.workers import prefetch, thread_map

CHANNELS = ("red", "green", "blue", "yellow")


@pytest.mark.parametrize("backend", ["onnx", "torch"])
@pytest.mark.parametrize("device", ["cpu", "auto", "cuda"])
def test_workers_plus_threads_never_exceed_the_usable_cpus(backend: str, device: str) -> None:
    for cpus, input_size, side in itertools.product(
        (1, 2, 3, 4, 8, 16, 64), (32, 128, 224, 512), (None, 64, 128, 512, 2048, 3072)
    ):
        plan = plan_budget(
            backend, input_size, field_pixels=None if side is None else side * side, device=device, cpus=cpus
        )
        where = (backend, device, cpus, input_size, side, plan)
        assert plan.cpus == cpus and plan.threads >= 1 and plan.workers >= 0 and plan.lanes >= 1, where
        assert plan.workers + plan.threads * plan.lanes <= cpus, where
        assert plan.workers != 1, where  # one decoding process is a thread of this process instead
        if plan.lanes > 1:  # each lane decodes its own batch: no decoding processes, no prefetch thread
            assert backend == "onnx" and plan.workers == 0 and plan.prefetch == 0, where
            assert plan.threads * plan.lanes == cpus and plan.lanes <= budget_module.LANE_LIMIT, where
            continue
        assert backend == "torch" or cpus == 1, where  # ONNX Runtime on 2 CPUs or more runs in lanes
        # decoding in this process always overlaps the network; with processes, their window does
        assert (plan.prefetch > 0) == (plan.workers == 0), where
        decode_cores = cpus * budget_module.decode_share(backend, input_size, None if side is None else side * side)
        if plan.workers == 0 and round(decode_cores) >= 1 and device != "cuda":
            assert plan.threads <= max(1, cpus - 1), where  # the prefetch thread keeps a core to itself


def test_the_split_follows_the_measured_costs_on_two_cores() -> None:
    for side in (128, 512, 2048):  # ONNX Runtime: a lane per core, each decoding and running its own batches
        lanes = plan_budget("onnx", 128, field_pixels=side * side, cpus=2)
        assert (lanes.lanes, lanes.threads, lanes.workers, lanes.prefetch) == (2, 1, 0, 0)
    wide = plan_budget("onnx", 128, field_pixels=512 * 512, cpus=16)
    assert (wide.lanes, wide.threads) == (budget_module.LANE_LIMIT, 2)  # past 8 CPUs a lane gets more threads
    small = plan_budget("torch", 128, field_pixels=128 * 128, cpus=2)
    large = plan_budget("torch", 128, field_pixels=512 * 512, cpus=2)
    assert (small.workers, small.threads, small.prefetch, small.lanes) == (0, 2, 2, 1)  # decoding ~7%: both cores
    assert (large.workers, large.threads) == (0, 1)  # decoding is half a sample: it gets a core
    explicit = plan_budget("onnx", 128, field_pixels=128 * 128, workers=0, cpus=2)
    assert (explicit.lanes, explicit.threads, explicit.prefetch) == (1, 2, 2)  # --workers 0: the prefetch split
    many = plan_budget("torch", 128, field_pixels=2048 * 2048, cpus=16)
    assert many.workers >= 8 and many.workers + many.threads == 16  # big fields on many cores: decoding processes
    gpu = plan_budget("torch", 512, field_pixels=512 * 512, device="cuda", cpus=16)
    assert (gpu.workers, gpu.threads) == (15, 1)


def test_an_explicit_setting_wins_and_the_other_takes_what_is_left() -> None:
    assert plan_budget("onnx", 128, workers=4, cpus=2).workers == 4  # the user's call, even past the CPUs
    assert plan_budget("onnx", 128, workers=4, cpus=2).threads == 1
    assert plan_budget("onnx", 128, field_pixels=2048**2, workers=0, cpus=8).workers == 0
    chosen = plan_budget("onnx", 128, field_pixels=2048**2, threads=2, cpus=8)
    assert chosen.threads == 2 and chosen.workers + chosen.threads <= 8
    both = plan_budget("onnx", 128, workers=3, threads=7, cpus=2)
    assert (both.workers, both.threads) == (3, 7)
    assert plan_service("onnx", threads=3, decode_threads=5, cpus=2).threads == 3
    assert plan_service("onnx", threads=3, decode_threads=5, cpus=2).workers == 5
    assert plan_service("onnx", threads=2, cpus=8).lanes == 4  # an explicit thread count per call: lanes follow
    assert plan_cells(threads=6, cpus=2).threads == 6


def test_the_budget_is_the_affinity_not_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert utils.usable_cpus() == 1
    plan = plan_budget("onnx", 128, field_pixels=512 * 512)
    assert plan.cpus == 1 and plan.workers == 0 and plan.threads == 1 and plan.lanes == 1
    service = plan_service("onnx")
    assert service.threads == 1 and service.workers == 1


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 8, 16, 64])
def test_the_service_and_cells_fit_the_cpus(cpus: int) -> None:
    service = plan_service("onnx", cpus=cpus)
    assert service.threads >= 1 and service.workers >= 1
    assert service.threads * service.lanes == cpus  # ONNX Runtime: a network call per lane, the lanes fill the CPUs
    assert service.lanes == min(cpus, budget_module.LANE_LIMIT)
    assert service.workers <= min(budget_module.SERVICE_DECODE_LIMIT, max(1, cpus - cpus // 2))
    torch = plan_service("torch", cpus=cpus)  # PyTorch: one call at a time on half the CPUs, decoding beside it
    assert torch.lanes == 1 and torch.threads + torch.workers <= max(2, cpus)
    assert torch.workers <= budget_module.SERVICE_DECODE_LIMIT
    cells = plan_cells(cpus=cpus)
    assert cells.threads + 1 <= max(2, cpus) and cells.prefetch == 1


# ------------------------------------------------------------------------------------------------ prefetch


def test_prefetch_keeps_order_and_stays_bounded() -> None:
    produced: list[int] = []

    def items() -> Iterator[int]:
        for i in range(50):
            produced.append(i)
            yield i

    stream = prefetch(items(), 3)
    assert next(stream) == 0
    for _ in range(100):  # the producer runs ahead, but no more than the queue and the item in hand
        if len(produced) >= 4:
            break
        threading.Event().wait(0.01)
    assert 2 <= len(produced) <= 5
    assert [0, *stream] == list(range(50))
    assert list(prefetch(iter(range(5)), 0)) == list(range(5))


def test_prefetch_raises_where_the_producer_failed_and_stops_when_the_consumer_does() -> None:
    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("bad file 3")

    got: list[int] = []
    with pytest.raises(ValueError, match="bad file 3"):
        for item in prefetch(failing(), 2):
            got.append(item)
    assert got == [1, 2]
    before = threading.active_count()
    stream = prefetch(itertools.count(), 2)
    assert next(stream) == 0
    stream.close()  # a consumer that stops early: the thread ends, nothing is left running
    assert threading.active_count() == before
    assert not any(t.name == "protloc-prefetch" for t in threading.enumerate())


def test_thread_map_keeps_order_stays_bounded_raises_in_place_and_stops_with_its_consumer() -> None:
    started: list[int] = []
    gate = threading.Event()

    def slow_first(i: int) -> int:
        started.append(i)
        if i == 0:
            gate.wait(5)  # the first item finishes last: results still come in order
        return i * i

    stream = thread_map(slow_first, iter(range(40)), threads=3, window=4)
    first = threading.Thread(target=lambda: (threading.Event().wait(0.2), gate.set()))
    first.start()
    assert next(stream) == 0
    first.join()
    assert len(started) <= 4 + 1  # at most the window in flight when the first result came
    assert [0, *stream] == [i * i for i in range(40)]
    assert list(thread_map(lambda i: i + 1, range(5), threads=1)) == [1, 2, 3, 4, 5]

    def failing(i: int) -> int:
        if i == 5:
            raise ValueError("bad file 5")
        return i

    got: list[int] = []
    with pytest.raises(ValueError, match="bad file 5"):
        for item in thread_map(failing, range(20), threads=2):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]
    ran: list[int] = []
    stream = thread_map(ran.append, itertools.count(), threads=2)
    next(stream)
    stream.close()  # a consumer that stops early: nothing is left running, the items not started never run
    assert not any(t.name.startswith("protloc-lane") for t in threading.enumerate())
    assert len(ran) <= 4


def _fake_network(batch: np.ndarray) -> np.ndarray:
    """Probabilities that depend on every sample's pixels, so a swapped or repeated sample shows."""
    flat = batch.reshape(len(batch), batch.shape[1], -1)
    return np.concatenate([flat.mean(axis=2), flat.std(axis=2), flat[:, :, :3].reshape(len(batch), -1)], axis=1)


def _card() -> Any:
    return SimpleNamespace(
        channels=CHANNELS,
        size=16,
        input=SimpleNamespace(bit_depth=8, channels=CHANNELS),
        source_size=None,
        num_classes=20,
    )


def test_prefetched_prediction_equals_sequential_in_order_and_resumes(kaggle_dir: Callable[..., Path]) -> None:
    test_ids = [f"t{i:02d}" for i in range(13)]
    root = kaggle_dir({"a": "0"}, test_ids, size=24)
    catalog = open_for_prediction(root, channels=list(CHANNELS))
    card = _card()

    def run(workers: int, ahead: int, start: int = 0, lanes: int = 1) -> tuple[list[int], np.ndarray]:
        firsts: list[int] = []
        rows: list[np.ndarray] = []

        def keep(first: int, probabilities: np.ndarray) -> None:
            firsts.append(first)
            rows.append(probabilities)

        predict_catalog(
            _fake_network,
            card,
            catalog,
            batch_size=4,
            workers=workers,
            ahead=ahead,
            start=start,
            lanes=lanes,
            on_batch=keep,
        )
        return firsts, np.concatenate(rows)

    firsts, sequential = run(0, 0)
    assert firsts == [0, 4, 8, 12] and sequential.shape == (13, 20)
    assert len({tuple(row) for row in sequential}) == 13  # every sample its own row
    for workers, ahead in ((0, 1), (0, 2), (1, 3), (2, 0)):
        got_firsts, got = run(workers, ahead)
        assert got_firsts == firsts
        np.testing.assert_array_equal(got, sequential)
    for lanes in (2, 3, 8):  # each lane decodes and runs its own batches; the rows arrive in order all the same
        got_firsts, got = run(0, 0, lanes=lanes)
        assert got_firsts == firsts
        np.testing.assert_array_equal(got, sequential)
    for lanes in (1, 2):
        resumed_firsts, resumed = run(0, 2, start=8, lanes=lanes)  # a resumed run computes the rows it lacks
        assert resumed_firsts == [8, 12]
        np.testing.assert_array_equal(resumed, sequential[8:])
    kept = predict_catalog(_fake_network, card, catalog, batch_size=5, workers=0, ahead=2)
    assert kept is not None
    np.testing.assert_array_equal(kept, sequential)


def test_a_bad_file_fails_the_prefetched_run_with_its_name(kaggle_dir: Callable[..., Path]) -> None:
    from protloc.errors import DataError

    root = kaggle_dir({"a": "0"}, [f"t{i}" for i in range(9)], size=24)
    (root / "test" / "t6_green.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    catalog = open_for_prediction(root, channels=list(CHANNELS))
    for lanes in (1, 2):
        done: list[int] = []
        with pytest.raises(DataError, match="t6_green"):
            predict_catalog(
                _fake_network,
                _card(),
                catalog,
                batch_size=2,
                workers=0,
                ahead=2,
                lanes=lanes,
                on_batch=lambda f, p: done.append(f),  # noqa: B023 (called before the loop moves on)
            )
        assert done == [0, 2, 4]  # the batches before the bad one were delivered, in order
        assert not any(t.name.startswith("protloc-lane") for t in threading.enumerate())


def test_predict_and_evaluate_take_their_split_from_the_budget_and_the_cli_override_wins(
    trained_run: Path, synth_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from protloc.cli import main
    from protloc.inference import core, evaluate, predict

    seen: list[dict[str, Any]] = []
    real_load, real_catalog = predict.load_backend, core.predict_catalog

    def spy_load(*args: Any, **kwargs: Any) -> Any:
        seen.append({"threads": kwargs["threads"], "spin": kwargs["spin"]})
        return real_load(*args, **kwargs)

    def spy_catalog(*args: Any, **kwargs: Any) -> Any:
        seen[-1].update(workers=kwargs["workers"], ahead=kwargs["ahead"], lanes=kwargs["lanes"])
        return real_catalog(*args, **kwargs)

    for module in (predict, evaluate):
        monkeypatch.setattr(module, "load_backend", spy_load)
        monkeypatch.setattr(module, "predict_catalog", spy_catalog)
    model = str(trained_run / "model")
    assert main(["predict", model, str(synth_data), "--out", str(tmp_path / "a"), "--threads", "1"]) == 0
    assert main(["predict", model, str(synth_data), "--out", str(tmp_path / "b"), "--workers", "3"]) == 0
    assert (
        main(["evaluate", model, str(synth_data), "--out", str(tmp_path / "e"), "--workers", "0", "--threads", "5"])
        == 0
    )
    assert main(["predict", model, str(synth_data), "--out", str(tmp_path / "c")]) == 0
    catalog = open_for_prediction(synth_data, channels=list(CHANNELS))
    default = budget_module.plan_for_catalog("torch", 64, catalog, device="auto")
    assert seen[0]["threads"] == 1 and seen[0]["workers"] + seen[0]["threads"] <= max(2, utils.usable_cpus())
    assert seen[1]["workers"] == 3
    assert (seen[2]["workers"], seen[2]["threads"], seen[2]["ahead"]) == (0, 5, budget_module.PREFETCH_BATCHES)
    assert (seen[3]["workers"], seen[3]["threads"], seen[3]["spin"]) == (default.workers, default.threads, False)
    assert seen[3]["lanes"] == default.lanes == 1  # the torch backend keeps the prefetch split
    assert seen[3]["workers"] + seen[3]["threads"] <= utils.usable_cpus()
