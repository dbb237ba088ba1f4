"""``backend="auto"``: which backend a batch gets, why, and that the answer does not change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from csv_helpers import SALES
from faulty import Square

import batchcore
from batchcore import BatchFlow, BatchNode, Flow, Node, use_backend
from batchcore.options import choose_backend
from batchcore.processors.cli import main

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "images"


class GilFree(Square):
    releases_gil = True


@pytest.mark.parametrize(
    ("node", "items", "expected"),
    [
        (Square(), [3], "sequential"),
        (Square(), [], "sequential"),
        (Square(), [1, 2], "process"),
        (Square(), (x for x in range(5)), "process"),  # no length: cannot be known small
        (GilFree(), [1, 2], "thread"),
        (GilFree(), [1], "sequential"),
    ],
)
def test_the_choice_and_its_reason(node: Any, items: Any, expected: str) -> None:
    name, reason = choose_backend(node, items)
    assert name == expected
    assert reason.startswith("auto: ")


@pytest.mark.parametrize("items", [[5], list(range(7))])
def test_auto_gives_what_sequential_gives_and_says_where_it_ran(items: list[int]) -> None:
    expected: dict[str, Any] = {"items": items}
    Square().run(expected)
    shared: dict[str, Any] = {"items": items}
    node = GilFree(backend="auto", workers=2)
    node.run(shared)
    assert shared["out"] == expected["out"]
    assert node.batch_stats.backend == ("sequential" if len(items) == 1 else "thread")
    assert node.batch_stats.reason.startswith("auto: ")


def test_a_chosen_backend_has_no_reason() -> None:
    node = Square(backend="thread", workers=2)
    node.run({"items": [1, 2, 3]})
    assert (node.batch_stats.backend, node.batch_stats.reason) == ("thread", "")


def test_use_backend_auto_reaches_flows() -> None:
    class Double(Node):
        def prep(self, shared: dict[str, Any]) -> int:
            return int(self.params["x"])

        def exec(self, x: int) -> int:
            return 2 * x

        def post(self, shared: dict[str, Any], prep_res: Any, exec_res: int) -> None:
            shared[f"out-{prep_res}"] = exec_res

    class Runs(BatchFlow):
        def prep(self, shared: dict[str, Any]) -> list[dict[str, int]]:
            return [{"x": x} for x in range(4)]

    shared: dict[str, Any] = {}
    flow = Runs(start=Flow(start=Double()))
    with use_backend("auto", workers=2):
        flow.run(shared)
    assert {key: shared[key] for key in sorted(shared)} == {f"out-{x}": 2 * x for x in range(4)}
    assert flow.batch_stats.backend == "process"


def test_inside_a_worker_auto_is_sequential_like_everything_else() -> None:
    class Inner(BatchNode):
        def prep(self, shared: dict[str, Any]) -> list[int]:
            return [1, 2, 3]

        def exec(self, item: int) -> int:
            return item

        def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
            shared["inner"] = self.batch_stats.backend

    class Outer(BatchNode):
        def prep(self, shared: dict[str, Any]) -> list[int]:
            return [0, 1]

        def exec(self, item: int) -> str:
            shared: dict[str, Any] = {}
            Inner(backend="auto").run(shared)
            return str(shared["inner"])

        def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[str]) -> None:
            shared["inner"] = exec_res

    shared: dict[str, Any] = {}
    Outer(backend="thread", workers=2).run(shared)
    assert shared["inner"] == ["sequential", "sequential"]


def test_an_unknown_backend_is_still_refused() -> None:
    with pytest.raises(ValueError, match="unknown backend 'autox'"):
        Square(backend="autox")


def test_the_cli_defaults_to_auto_and_reports_the_choice(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["csv", "stats", str(SALES), "--sum", "amount", "--json"]
    assert main(argv) == 0
    small = json.loads(capsys.readouterr().out)
    assert (small["backend"], small["backend_reason"]) == ("sequential", choose_reason(1))
    assert main([*argv, "--chunk-bytes", "64KiB"]) == 0
    split = json.loads(capsys.readouterr().out)
    assert split["backend"] == "thread"
    assert "releases the GIL" in split["backend_reason"]
    assert split["sum"] == pytest.approx(small["sum"], rel=1e-12)
    argv = ["images", str(SAMPLES), "-o", str(tmp_path), "-f", "grayscale", "--json"]
    assert main(argv) == 0
    images = json.loads(capsys.readouterr().out)
    assert images["backend"] == "thread"
    assert main([*argv[:-1], "--backend", "process", "--skip-existing", "--json"]) == 0
    chosen = json.loads(capsys.readouterr().out)
    assert (chosen["backend"], chosen["backend_reason"]) == ("process", "")


def choose_reason(count: int) -> str:
    return choose_backend(Square(), list(range(count)))[1]


def test_auto_is_not_a_registered_backend() -> None:
    """It is a choice among backends, so tests parametrized over the registry skip it."""
    assert "auto" not in batchcore.available_backends()
