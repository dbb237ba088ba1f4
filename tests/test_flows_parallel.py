"""BatchFlow on every backend: isolated sub-flow runs, merged writes, per-run results for post."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import BACKENDS, backend_params
from flow_nodes import (
    ClassFlow,
    Fails,
    Grade,
    ImageBatch,
    KeyedBatch,
    StudentFlow,
    WriteKey,
    image_subflow,
)
from hypothesis import given
from hypothesis import strategies as st

from batchcore import BatchFlow, Flow, RunResult
from batchcore.backends import process as process_backend

IMAGES = ["a.jpg", "b.jpg", "c.jpg"]
EXPECTED = {
    f"{image}:{name}": f"{name}(pixels of {image})"
    for image in IMAGES
    for name in ("grayscale", "blur")
}


def run_images(backend: str, **params: Any) -> tuple[ImageBatch, dict[str, Any]]:
    flow = ImageBatch(start=image_subflow(), backend=backend, workers=2)
    flow.set_params(params)
    shared: dict[str, Any] = {"images": IMAGES, "outputs": {}}
    action = flow.run(shared)
    assert action == "finished"
    return flow, shared


def test_cookbook_scratch_keys_work_on_every_backend(backend: str) -> None:
    _, shared = run_images(backend)
    assert shared["outputs"] == EXPECTED


def test_runs_are_isolated_even_when_they_interleave(parallel_backend: str) -> None:
    """Each run sleeps between writing and reading its scratch key: shared state would race."""
    _, shared = run_images(parallel_backend, delay=0.02)
    assert shared["outputs"] == EXPECTED


def test_writes_merge_in_batch_order(backend: str) -> None:
    _, shared = run_images(backend)
    assert shared["last_saved"] == "c.jpg:blur"  # the last run in batch order wins
    assert shared["image"] == "pixels of c.jpg"
    assert list(shared["outputs"]) == list(EXPECTED)  # dict merged key by key, in batch order


def test_post_gets_one_result_per_run_on_parallel_backends(parallel_backend: str) -> None:
    _, shared = run_images(parallel_backend)
    runs = shared["post_got"]
    assert [run.params for run in runs] == ImageBatch().prep({"images": IMAGES})
    assert all(isinstance(run, RunResult) and run.action == "saved" for run in runs)
    first = runs[0]
    assert first.writes["outputs"] == {"a.jpg:grayscale": "grayscale(pixels of a.jpg)"}
    assert first.writes["last_saved"] == "a.jpg:grayscale"
    assert "images" not in first.writes  # unchanged keys are not reported


def test_post_gets_none_on_the_sequential_backend() -> None:
    _, shared = run_images("sequential")
    assert shared["post_got"] is None


def test_runs_really_happen_in_workers() -> None:
    import os

    _, shared = run_images("process")
    assert os.getpid() not in set(shared["pids"].values())


def test_nested_batch_flows_combine_params(backend: str) -> None:
    inner = StudentFlow(start=Grade())
    outer = ClassFlow(start=inner, backend=backend, workers=2)
    shared: dict[str, Any] = {}
    outer.run(shared)
    assert sorted(shared["grades"]) == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert shared["grades"]["b2"] == {"class": "b", "level": "inner", "student": "b2"}


def test_failing_run_names_its_params(backend: str) -> None:
    flow = BatchFlow(start=Flow(start=Fails()), backend=backend, workers=2)
    flow.prep = lambda shared: [{"input": name} for name in IMAGES]  # type: ignore[method-assign]
    with pytest.raises(ValueError, match=r"cannot decode b\.jpg") as caught:
        flow.run({})
    assert any("item 1 ({'input': 'b.jpg'})" in note for note in caught.value.__notes__)


def test_collect_mode_keeps_the_other_runs(parallel_backend: str) -> None:
    flow = BatchFlow(start=Flow(start=Fails()), backend=parallel_backend, on_error="collect")
    flow.prep = lambda shared: [{"input": name} for name in IMAGES]  # type: ignore[method-assign]
    flow.run({})
    assert [f.index for f in flow.batch_stats.failures] == [1]
    assert flow.batch_stats.items == 3


def test_shared_travels_once_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    sends: list[bool] = []
    original = process_backend.ProcessPool.submit

    def counting(self: Any, worker: Any, job: Any, fail_fast: bool, track_time: bool) -> None:
        sends.append(worker.batch != self.batch)  # True when the task (and shared) is sent
        original(self, worker, job, fail_fast, track_time)

    monkeypatch.setattr(process_backend.ProcessPool, "submit", counting)
    flow = ImageBatch(start=image_subflow(), backend="process", workers=2, chunksize=1)
    shared: dict[str, Any] = {"images": IMAGES * 10, "outputs": {}, "big": "x" * 100_000}
    flow.run(shared)
    assert len(sends) == 60  # one job per run (chunksize=1) ...
    assert sum(sends) <= 2  # ... but the flow and shared went to each worker once


def test_unpicklable_shared_is_named() -> None:
    import threading

    from batchcore import SerializationError

    flow = ImageBatch(start=image_subflow(), backend="process", workers=2)
    shared = {"images": IMAGES, "outputs": {}, "lock": threading.Lock()}
    with pytest.raises(SerializationError, match=r"shared\['lock'\]"):
        flow.run(shared)


@pytest.mark.parametrize("name", backend_params(BACKENDS))
@given(keys=st.lists(st.text(alphabet="abc", min_size=1, max_size=2), max_size=12))
def test_any_backend_merges_like_sequential(name: str, keys: list[str]) -> None:
    """Writing distinct keys and a counter-free plain value: every backend ends as sequential."""

    def run(backend: str) -> dict[str, Any]:
        flow = KeyedBatch(start=Flow(start=WriteKey()), backend=backend, workers=2)
        shared: dict[str, Any] = {"keys": keys, "by_key": {}}
        flow.run(shared)
        return shared

    assert run(name) == run("sequential")


def test_shared_outputs_keeps_scratch_keys_in_the_worker(parallel_backend: str) -> None:
    class OnlyOutputs(ImageBatch):
        shared_outputs = ("outputs",)

    flow = OnlyOutputs(start=image_subflow(), backend=parallel_backend, workers=2)
    shared: dict[str, Any] = {"images": IMAGES, "outputs": {}}
    flow.run(shared)
    assert shared["outputs"] == EXPECTED
    assert "image" not in shared and "last_saved" not in shared  # scratch keys never came back
    assert all(set(run.writes) == {"outputs"} for run in shared["post_got"])


def test_each_run_result_holds_only_its_own_writes(parallel_backend: str) -> None:
    """Issue 15.4: a dict key that is new in ``shared`` must not alias run 0's writes."""

    class Captured(StudentFlow):
        def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
            shared["runs"] = exec_res

    flow = Captured(start=Flow(start=Grade()), backend=parallel_backend, workers=2)
    flow.set_params({"class": "a"})
    shared: dict[str, Any] = {}  # "grades" is created by the runs (setdefault)
    flow.run(shared)
    runs = shared["runs"]
    assert [list(run.writes["grades"]) for run in runs] == [["a0"], ["a1"], ["a2"]]
    assert runs[0].writes["grades"] is not shared["grades"]
    assert list(shared["grades"]) == ["a0", "a1", "a2"]
