"""Short programs, run many times as a user runs them: output to files, nothing on stderr but
what the program itself says, every line printed in ``exec`` delivered whole, nothing left running.

Races at exit show one run in a few, so each program runs many times (in parallel, to keep the
suite fast and to shake the timing); a run's workers carry a tag in their environment, so a
worker that outlives its program is found even after it has been re-parented.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from conftest import backend_params

BACKENDS = ["sequential", "thread", "process", "dask"]
REPEATS = {"sequential": 2, "thread": 6, "process": 12, "dask": 2}
TAG = "BATCHCORE_EXIT_TEST_TAG"

TWO_ITEMS = """
from batchcore import BatchNode

class N(BatchNode):
    def prep(self, shared):
        return [1, 2]

    def exec(self, x):
        return x + 1

    def post(self, shared, p, e):
        print(e)

if __name__ == "__main__":
    N(backend=BACKEND, workers=2).run({})
"""

PRINTS = """
import sys
import warnings
from batchcore import BatchNode

class N(BatchNode):
    def prep(self, shared):
        return list(range(6))

    def exec(self, x):
        print(f"working on {x}")
        print(f"note {x}", file=sys.stderr)
        warnings.warn(f"careful {x}")
        return x

    def post(self, shared, p, e):
        print("done", e)

if __name__ == "__main__":
    N(backend=BACKEND, workers=2).run({})
"""

NESTED = """
from batchcore import BatchFlow, Flow, Node, use_backend

class Score(Node):
    def prep(self, shared):
        return self.params["group"], self.params["member"]

    def exec(self, key):
        group, member = key
        value = len(group) * 10 + member
        print(f"- {group}/{member}: {value}")
        return value

    def post(self, shared, p, e):
        shared.setdefault("scores", {})[f"{p[0]}/{p[1]}"] = e

class Members(BatchFlow):
    def prep(self, shared):
        return [{"member": m} for m in range(3)]

class Groups(BatchFlow):
    def prep(self, shared):
        return [{"group": g} for g in ("a", "bb", "ccc")]

    def post(self, shared, p, e):
        print("total", sum(shared["scores"].values()))

if __name__ == "__main__":
    with use_backend(BACKEND, workers=2):
        Groups(start=Members(start=Flow(start=Score()))).run({})
"""

PREP_RAISES = """
from batchcore import BatchNode

class N(BatchNode):
    def prep(self, shared):
        raise ValueError("boom")

    def exec(self, x):
        return x

if __name__ == "__main__":
    from batchcore import get_backend
    backend = get_backend(BACKEND, 2)
    if hasattr(backend, "start"):
        backend.start()  # workers are still booting when the error ends the program
    N(backend=BACKEND, workers=2).run({})
"""

# The items generator waits for item 0's result to exist, then the user presses Ctrl-C.
INTERRUPTED = """
import os
import time
from batchcore import BatchNode

MARK = os.environ["MARK"]

class N(BatchNode):
    def prep(self, shared):
        def items():
            yield 0
            yield 1
            deadline = time.monotonic() + 20
            while not os.path.exists(MARK) and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.1)
            raise KeyboardInterrupt
        return items()

    def exec(self, x):
        if x == 0:
            open(MARK, "w").close()
        else:
            time.sleep(0.5)
        return x

if __name__ == "__main__":
    N(backend=BACKEND, workers=2, chunksize=1).run({})
"""


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


def run_many(program: str, backend: str, tmp_path: Path, repeats: int) -> list[Outcome]:
    """Run ``program`` as a file ``repeats`` times, four at a time, stdout and stderr to files."""
    path = tmp_path / "program.py"
    path.write_text(textwrap.dedent(program).replace("BACKEND", repr(backend)))
    tag = uuid.uuid4().hex

    def once(i: int) -> Outcome:
        out, err = tmp_path / f"{i}.out", tmp_path / f"{i}.err"
        env = dict(os.environ, **{TAG: tag, "MARK": str(tmp_path / f"{i}.mark")})
        env.pop("PYTHONWARNINGS", None)
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = subprocess.run(
                [sys.executable, str(path)],
                stdout=stdout,
                stderr=stderr,
                env=env,
                cwd=tmp_path,
                timeout=90,
            )
        return Outcome(proc.returncode, out.read_text(), err.read_text())

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(once, range(repeats)))
    assert tagged_processes(tag, grace=5.0) == []
    return outcomes


def tagged_processes(tag: str, grace: float) -> list[str]:
    """Processes still alive after ``grace`` seconds whose environment carries ``tag``."""
    deadline = time.monotonic() + grace
    while True:
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get(TAG) == tag and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(f"{proc.pid} {' '.join(proc.cmdline())[:100]}")
            except psutil.Error:
                continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def stderr_lines(outcome: Outcome) -> list[str]:
    return outcome.stderr.splitlines()


pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.mark.parametrize("backend", backend_params(BACKENDS))
def test_a_two_item_batch_ends_without_a_word_on_stderr(backend: str, tmp_path: Path) -> None:
    for outcome in run_many(TWO_ITEMS, backend, tmp_path, REPEATS[backend]):
        assert (outcome.returncode, outcome.stdout, outcome.stderr) == (0, "[2, 3]\n", "")


@pytest.mark.parametrize("backend", backend_params(BACKENDS))
def test_every_line_printed_in_exec_arrives_whole(backend: str, tmp_path: Path) -> None:
    for outcome in run_many(PRINTS, backend, tmp_path, REPEATS[backend]):
        assert outcome.returncode == 0, outcome.stderr
        assert outcome.stdout.splitlines() == [f"working on {x}" for x in range(6)] + [
            "done [0, 1, 2, 3, 4, 5]"
        ]
        errors = stderr_lines(outcome)
        assert [line for line in errors if line.startswith("note")] == [
            f"note {x}" for x in range(6)
        ]
        warned = [line.split("UserWarning: ")[1] for line in errors if "UserWarning" in line]
        assert warned == [f"careful {x}" for x in range(6)]
        others = [line for line in errors if not line.startswith(("note", "  warnings.warn"))]
        assert [line for line in others if "UserWarning" not in line] == []


@pytest.mark.parametrize("backend", backend_params(BACKENDS))
def test_a_nested_flow_prints_what_the_sequential_one_prints(backend: str, tmp_path: Path) -> None:
    groups = ("a", "bb", "ccc")
    expected = [f"- {g}/{m}: {len(g) * 10 + m}" for g in groups for m in range(3)]
    expected.append(f"total {sum(len(g) * 30 + 3 for g in groups)}")
    for outcome in run_many(NESTED, backend, tmp_path, REPEATS[backend]):
        assert (outcome.returncode, outcome.stderr) == (0, "")
        assert outcome.stdout.splitlines() == expected  # in input order, on every backend


@pytest.mark.parametrize("backend", backend_params(BACKENDS))
def test_an_error_in_prep_prints_its_traceback_and_nothing_else(
    backend: str, tmp_path: Path
) -> None:
    for outcome in run_many(PREP_RAISES, backend, tmp_path, REPEATS[backend]):
        assert outcome.returncode == 1
        assert outcome.stdout == ""
        assert outcome.stderr.count("Traceback") == 1, outcome.stderr
        assert stderr_lines(outcome)[-1] == "ValueError: boom"


@pytest.mark.parametrize("backend", backend_params(BACKENDS))
def test_ctrl_c_after_the_first_result_prints_one_traceback(backend: str, tmp_path: Path) -> None:
    for outcome in run_many(INTERRUPTED, backend, tmp_path, REPEATS[backend]):
        assert outcome.returncode in (130, -2), outcome.stderr  # Python re-raises SIGINT at exit
        assert outcome.stderr.count("Traceback") == 1, outcome.stderr
        assert stderr_lines(outcome)[-1] == "KeyboardInterrupt"
