"""Differential tests: the same small scenarios run on ``pocketflow`` 0.0.3 and on ``batchcore``.

Every test is parametrized over the two modules. A scenario is a function ``(m, ev)`` that builds
nodes from module ``m``, runs them and appends what it sees to the list ``ev``; ``observe`` runs it
and captures its return value, exception (type and message), events and warnings (category and
text). Tests pin the observable outcome with literals (the values PocketFlow 0.0.3 produces; the
``pocketflow`` parameter checks the literal is right) and, where a literal would be unwieldy,
compare with the same scenario run on ``pocketflow``.

Deliberate differences that are *not* compared here:
- ``cur_retry`` is a ContextVar-backed property in batchcore (readable inside ``exec`` and
  ``exec_fallback``; not an instance attribute afterwards, and set on async nodes too);
- batchcore adds a ``__notes__`` entry to exceptions re-raised from BatchNode/BatchFlow items
  (``observe`` compares only the exception type and message);
- a failing ``AsyncParallelBatchNode`` item (or ``AsyncParallelBatchFlow`` run) cancels its
  siblings in batchcore, where PocketFlow's ``gather`` leaves them running (both pinned below).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import pytest

pocketflow = pytest.importorskip("pocketflow")
import batchcore  # noqa: E402

CLASS_NAMES = [
    "BaseNode",
    "Node",
    "BatchNode",
    "Flow",
    "BatchFlow",
    "AsyncNode",
    "AsyncBatchNode",
    "AsyncParallelBatchNode",
    "AsyncFlow",
    "AsyncBatchFlow",
    "AsyncParallelBatchFlow",
]


@pytest.fixture(params=["pocketflow", "batchcore"])
def m(request: pytest.FixtureRequest) -> ModuleType:
    """The module under test: PocketFlow itself (the reference) or batchcore."""
    return {"pocketflow": pocketflow, "batchcore": batchcore}[request.param]


# --- helpers --------------------------------------------------------------------------------------

Scenario = Callable[[ModuleType, list[Any]], Any]


@dataclass
class Outcome:
    result: Any = None
    error: tuple[str, str] | None = None
    events: list[Any] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)


def observe(scenario: Scenario, module: ModuleType) -> Outcome:
    """Run ``scenario`` on ``module``; capture result or error, events and every warning."""
    out = Outcome()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out.result = scenario(module, out.events)
        except Exception as exc:
            out.error = (type(exc).__name__, str(exc))
    out.warnings = [(w.category.__name__, str(w.message)) for w in caught]
    return out


def same_as_pocketflow(scenario: Scenario, module: ModuleType) -> Outcome:
    """Observe ``scenario`` on ``module`` and assert it matches the run on ``pocketflow``."""
    got = observe(scenario, module)
    assert got == observe(scenario, pocketflow)
    return got


class Tags:
    """Names objects by order of first appearance (0, 1, ...) to compare identity patterns."""

    def __init__(self) -> None:
        self._seen: list[Any] = []  # compared with `is`; kept alive for the whole scenario

    def __call__(self, obj: Any) -> int:
        for index, seen in enumerate(self._seen):
            if seen is obj:
                return index
        self._seen.append(obj)
        return len(self._seen) - 1


class Boom(Exception):
    pass


class Interrupt(BaseException):
    """Like KeyboardInterrupt: never retried, never passed to exec_fallback."""


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float]]:
    """Record (instead of doing) ``time.sleep`` and ``asyncio.sleep`` calls made for retries."""
    calls: list[tuple[str, float]] = []
    real_sleep = time.sleep
    real_async_sleep = asyncio.sleep
    # Only this test's thread: other threads of the process (a warm Dask client's event loop,
    # say) keep sleeping for real, and their sleeps are not the retries being observed.
    owner = threading.get_ident()

    def fake_sleep(seconds: float) -> None:
        if threading.get_ident() != owner:
            return real_sleep(seconds)
        calls.append(("sleep", seconds))
        return None

    async def fake_async_sleep(seconds: float, result: Any = None) -> Any:
        if threading.get_ident() != owner:
            return await real_async_sleep(seconds, result)
        calls.append(("asleep", seconds))
        return await real_async_sleep(0, result)

    monkeypatch.setattr(time, "sleep", fake_sleep)
    monkeypatch.setattr(asyncio, "sleep", fake_async_sleep)
    return calls


# --- classes, signatures, constructors ------------------------------------------------------------

EXPECTED_MRO = {
    "BaseNode": ["BaseNode", "object"],
    "Node": ["Node", "BaseNode", "object"],
    "BatchNode": ["BatchNode", "Node", "BaseNode", "object"],
    "Flow": ["Flow", "BaseNode", "object"],
    "BatchFlow": ["BatchFlow", "Flow", "BaseNode", "object"],
    "AsyncNode": ["AsyncNode", "Node", "BaseNode", "object"],
    "AsyncBatchNode": ["AsyncBatchNode", "AsyncNode", "BatchNode", "Node", "BaseNode", "object"],
    "AsyncParallelBatchNode": [
        "AsyncParallelBatchNode",
        "AsyncNode",
        "BatchNode",
        "Node",
        "BaseNode",
        "object",
    ],
    "AsyncFlow": ["AsyncFlow", "Flow", "AsyncNode", "Node", "BaseNode", "object"],
    "AsyncBatchFlow": [
        "AsyncBatchFlow",
        "AsyncFlow",
        "BatchFlow",
        "Flow",
        "AsyncNode",
        "Node",
        "BaseNode",
        "object",
    ],
    "AsyncParallelBatchFlow": [
        "AsyncParallelBatchFlow",
        "AsyncFlow",
        "BatchFlow",
        "Flow",
        "AsyncNode",
        "Node",
        "BaseNode",
        "object",
    ],
}


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_mro(m: ModuleType, name: str) -> None:
    assert [c.__name__ for c in getattr(m, name).__mro__] == EXPECTED_MRO[name]


def test_subclass_and_isinstance_matrix(m: ModuleType) -> None:
    def matrix(module: ModuleType) -> list[tuple[str, str, bool, bool]]:
        rows = []
        for a in CLASS_NAMES:
            instance = getattr(module, a)()
            for b in CLASS_NAMES:
                cls_b = getattr(module, b)
                rows.append(
                    (a, b, issubclass(getattr(module, a), cls_b), isinstance(instance, cls_b))
                )
        return rows

    assert matrix(m) == matrix(pocketflow)
    # The relations user code checks most often.
    assert isinstance(m.AsyncBatchFlow(), m.BatchFlow)
    assert isinstance(m.AsyncFlow(), m.AsyncNode)
    assert isinstance(m.AsyncParallelBatchNode(), m.BatchNode)
    assert not isinstance(m.Flow(), m.Node)
    assert not isinstance(m.BatchFlow(), m.AsyncNode)


def _positional_signature(func: Callable[..., Any]) -> list[tuple[str, str, Any]]:
    """Parameters a caller can pass positionally or by keyword (keyword-only additions skipped)."""
    return [
        (p.name, p.kind.name, p.default)
        for p in inspect.signature(func).parameters.values()
        if p.kind is not inspect.Parameter.KEYWORD_ONLY
    ]


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_constructor_and_method_signatures(m: ModuleType, name: str) -> None:
    ours, ref = getattr(m, name), getattr(pocketflow, name)
    assert _positional_signature(ours.__init__) == _positional_signature(ref.__init__)
    # Every attribute PocketFlow's class has (methods users override or call, private hooks
    # like _run/_exec/_orch that subclasses use) exists here, with the same parameters.
    for attr in dir(ref):
        if attr.startswith("__"):
            continue
        assert hasattr(ours, attr), attr
        if callable(getattr(ref, attr)):
            assert _positional_signature(getattr(ours, attr)) == _positional_signature(
                getattr(ref, attr)
            ), attr
        assert inspect.iscoroutinefunction(getattr(ours, attr)) == inspect.iscoroutinefunction(
            getattr(ref, attr)
        ), attr


def test_constructor_forms(m: ModuleType) -> None:
    n = m.Node()
    forms = {
        "BaseNode()": m.BaseNode(),
        "Node(3, 0.1)": m.Node(3, 0.1),
        "Node(max_retries=2, wait=0)": m.Node(max_retries=2, wait=0),
        "Node(wait=0.5)": m.Node(wait=0.5),
        "BatchNode(2, 0.5)": m.BatchNode(2, 0.5),
        "AsyncNode(4)": m.AsyncNode(4),
        "AsyncBatchNode(2, 0.5)": m.AsyncBatchNode(2, 0.5),
        "AsyncParallelBatchNode(max_retries=3)": m.AsyncParallelBatchNode(max_retries=3),
        "Flow()": m.Flow(),
        "Flow(n)": m.Flow(n),
        "Flow(start=n)": m.Flow(start=n),
        "BatchFlow(n)": m.BatchFlow(n),
        "AsyncFlow(start=n)": m.AsyncFlow(start=n),
        "AsyncBatchFlow(n)": m.AsyncBatchFlow(n),
        "AsyncParallelBatchFlow(start=n)": m.AsyncParallelBatchFlow(start=n),
    }
    seen = {
        form: {
            key: getattr(obj, key)
            for key in ("params", "successors", "max_retries", "wait", "start_node")
            if hasattr(obj, key)
        }
        for form, obj in forms.items()
    }
    p, s = {}, {}
    assert seen == {
        "BaseNode()": {"params": p, "successors": s},
        "Node(3, 0.1)": {"params": p, "successors": s, "max_retries": 3, "wait": 0.1},
        "Node(max_retries=2, wait=0)": {"params": p, "successors": s, "max_retries": 2, "wait": 0},
        "Node(wait=0.5)": {"params": p, "successors": s, "max_retries": 1, "wait": 0.5},
        "BatchNode(2, 0.5)": {"params": p, "successors": s, "max_retries": 2, "wait": 0.5},
        "AsyncNode(4)": {"params": p, "successors": s, "max_retries": 4, "wait": 0},
        "AsyncBatchNode(2, 0.5)": {"params": p, "successors": s, "max_retries": 2, "wait": 0.5},
        "AsyncParallelBatchNode(max_retries=3)": {
            "params": p,
            "successors": s,
            "max_retries": 3,
            "wait": 0,
        },
        "Flow()": {"params": p, "successors": s, "start_node": None},
        "Flow(n)": {"params": p, "successors": s, "start_node": n},
        "Flow(start=n)": {"params": p, "successors": s, "start_node": n},
        "BatchFlow(n)": {"params": p, "successors": s, "start_node": n},
        # Async flows reach Node.__init__ through the MRO, so they carry max_retries and wait.
        "AsyncFlow(start=n)": {
            "params": p,
            "successors": s,
            "start_node": n,
            "max_retries": 1,
            "wait": 0,
        },
        "AsyncBatchFlow(n)": {
            "params": p,
            "successors": s,
            "start_node": n,
            "max_retries": 1,
            "wait": 0,
        },
        "AsyncParallelBatchFlow(start=n)": {
            "params": p,
            "successors": s,
            "start_node": n,
            "max_retries": 1,
            "wait": 0,
        },
    }
    # Each instance gets its own params and successors dicts.
    assert forms["Node(3, 0.1)"].params is not forms["BaseNode()"].params
    assert forms["Node(3, 0.1)"].successors is not forms["BaseNode()"].successors
    # Sync flows have no retry settings (they are BaseNodes, not Nodes).
    assert not hasattr(m.Flow(), "max_retries")
    assert not hasattr(m.BatchFlow(), "wait")


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda m: m.BaseNode(1), id="BaseNode(1)"),
        pytest.param(lambda m: m.Node(1, 0, 3), id="Node(1, 0, 3)"),
        pytest.param(lambda m: m.BatchNode(1, 0, 3), id="BatchNode(1, 0, 3)"),
        pytest.param(lambda m: m.Flow(None, 1), id="Flow(None, 1)"),
        pytest.param(lambda m: m.BatchFlow(None, 1), id="BatchFlow(None, 1)"),
        pytest.param(lambda m: m.AsyncFlow(start=None, wait=1), id="AsyncFlow(wait=1)"),
        pytest.param(lambda m: m.AsyncParallelBatchFlow(None, 1), id="APBFlow(None, 1)"),
    ],
)
def test_constructor_rejects_what_pocketflow_rejects(m: ModuleType, make: Any) -> None:
    with pytest.raises(TypeError):
        make(m)


def test_user_subclass_init_patterns(m: ModuleType) -> None:
    """The constructor patterns of PocketFlow's own tests and cookbook."""

    class NumberNode(m.Node):
        def __init__(self, number):
            super().__init__()
            self.number = number

    class Fallback(m.Node):
        def __init__(self, should_fail=True, max_retries=1):
            super().__init__(max_retries=max_retries)
            self.should_fail = should_fail

    class Chunks(m.AsyncBatchNode):
        def __init__(self, chunk_size=10):
            super().__init__()
            self.chunk_size = chunk_size

    class Parallel(m.AsyncParallelBatchNode):
        def __init__(self):
            super().__init__(max_retries=3, wait=0.5)

    class Pipeline(m.Flow):
        def __init__(self, start):
            super().__init__(start=start)
            self.label = "p"

    class Outer(m.AsyncBatchFlow):
        def __init__(self, start):
            super().__init__(start)

    num, fb, ch, par = NumberNode(5), Fallback(False, 3), Chunks(4), Parallel()
    pipe, outer = Pipeline(num), Outer(num)
    assert (num.number, num.max_retries, num.wait) == (5, 1, 0)
    assert (fb.should_fail, fb.max_retries) == (False, 3)
    assert (ch.chunk_size, ch.max_retries) == (4, 1)
    assert (par.max_retries, par.wait) == (3, 0.5)
    assert (pipe.start_node, pipe.label) == (num, "p")
    assert (outer.start_node, outer.max_retries) == (num, 1)


# --- wiring: >>, - "action" >>, next, start ------------------------------------------------------


def test_rshift_and_next_return_the_target_and_chain(m: ModuleType) -> None:
    def scenario(m, ev):
        a, b, c, d, e = (m.Node() for _ in range(5))
        tags = Tags()
        for node in (a, b, c, d, e):
            tags(node)
        ev.append(tags(a >> b))
        ev.append(tags(b >> c >> d))
        ev.append(tags(a - "x" >> e))
        ev.append(tags(a.next(c, "y")))
        ev.append(tags(e.next(c)))
        ev.append(tags(d.next(a, action="back")))
        for node in (a, b, c, d, e):
            ev.append({action: tags(target) for action, target in node.successors.items()})
        ev.append(type(a - "z").__name__)
        ev.append(a.successors.get("z"))  # a transition alone wires nothing

    out = same_as_pocketflow(scenario, m)
    assert out.warnings == [] and out.error is None
    assert out.events == [
        1,
        3,
        4,
        2,
        2,
        0,
        {"default": 1, "x": 4, "y": 2},
        {"default": 2},
        {"default": 3},
        {"back": 0},
        {"default": 2},
        "_ConditionalTransition",
        None,
    ]


def test_overwriting_successor_warns_and_overwrites(m: ModuleType) -> None:
    def scenario(m, ev):
        a, b, c = m.Node(), m.Node(), m.Node()
        a >> b
        a >> c
        a - "x" >> b
        a - "x" >> c
        a.next(b, "x")
        a.next(b, "y")
        a - "default" >> b
        ev.append([(k, v is b) for k, v in a.successors.items()])

    out = same_as_pocketflow(scenario, m)
    assert out.warnings == [
        ("UserWarning", "Overwriting successor for action 'default'"),
        ("UserWarning", "Overwriting successor for action 'x'"),
        ("UserWarning", "Overwriting successor for action 'x'"),
        ("UserWarning", "Overwriting successor for action 'default'"),
    ]
    assert out.events == [[("default", True), ("x", True), ("y", True)]]


@pytest.mark.parametrize("action", [3, None, 1.5, b"bytes", ["x"]], ids=repr)
def test_action_must_be_a_string(m: ModuleType, action: Any) -> None:
    with pytest.raises(TypeError) as info:
        m.Node() - action
    assert str(info.value) == "Action must be a string"


def test_flow_start_returns_the_node(m: ModuleType) -> None:
    def scenario(m, ev):
        class Step(m.Node):
            def __init__(self, name):
                super().__init__()
                self.name = name

            def post(self, shared, prep_res, exec_res):
                ev.append(self.name)

        flow = m.Flow()
        n1, n2, n3 = Step("n1"), Step("n2"), Step("n3")
        ev.append(flow.start(n1) is n1)
        ev.append(flow.start_node is n1)
        flow.start(n1).next(n2).next(n3)
        return flow.run({})

    out = same_as_pocketflow(scenario, m)
    assert out.events == [True, True, "n1", "n2", "n3"]
    assert out.result is None and out.warnings == []


# --- run(), params, hooks -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "default", "next", 42, ("a", 1), ""], ids=repr)
def test_run_returns_what_post_returns(m: ModuleType, value: Any) -> None:
    class N(m.Node):
        def post(self, shared, prep_res, exec_res):
            return value

    class F(m.Flow):
        def post(self, shared, prep_res, exec_res):
            return value

    class BF(m.BatchFlow):
        def post(self, shared, prep_res, exec_res):
            return value

    assert N().run({}) == value
    assert F(start=m.Node()).run({}) == value
    assert BF(start=m.Node()).run({}) == value


def test_default_hooks_and_return_values(m: ModuleType) -> None:
    def scenario(m, ev):
        ev.append(m.BaseNode().run({}))
        ev.append(m.Node().run({}))
        ev.append(m.BatchNode().run({}))
        ev.append(m.Flow().run({}))  # no start node: runs nothing
        ev.append(m.Flow(start=m.Node()).run({}))
        ev.append(m.BatchFlow(start=m.Node()).run({}))
        node = m.Node()
        ev.append((node.prep({}), node.exec(1), node.post({}, 1, 2)))

        class ExecOnly(m.Node):
            def exec(self, prep_res):
                ev.append(("exec", prep_res))
                return "result"

        ev.append(ExecOnly().run({}))  # default post returns None, not the exec result

        class PostGetsExec(m.Node):
            def post(self, shared, prep_res, exec_res):
                return ("post", prep_res, exec_res)

        ev.append(PostGetsExec().run({}))

    out = same_as_pocketflow(scenario, m)
    assert out.events == [
        None,
        None,
        None,
        None,
        None,
        None,
        (None, None, None),
        ("exec", None),
        None,
        ("post", None, None),
    ]
    assert out.warnings == [] and out.error is None


def test_prep_result_is_the_same_object_in_exec_and_post(m: ModuleType) -> None:
    marker = object()

    class N(m.Node):
        def prep(self, shared):
            return marker

        def exec(self, prep_res):
            assert prep_res is marker
            return [prep_res]

        def post(self, shared, prep_res, exec_res):
            return prep_res is marker and exec_res[0] is marker

    assert N().run({}) is True


def test_run_with_successors_warns_and_runs_only_the_node(m: ModuleType) -> None:
    def scenario(m, ev):
        class Step(m.Node):
            def __init__(self, name):
                super().__init__()
                self.name = name

            def exec(self, prep_res):
                ev.append(self.name)

            def post(self, shared, prep_res, exec_res):
                return "default"

        a, b = Step("a"), Step("b")
        a >> b
        ev.append(a.run({}))
        flow = m.Flow(start=Step("inner"))
        flow >> Step("after")
        ev.append(flow.run({}))
        bf = m.BatchFlow(start=Step("inner-batch"))
        bf - "x" >> Step("after")
        ev.append(bf.run({}))

    out = same_as_pocketflow(scenario, m)
    assert out.events == ["a", "default", "inner", "default", None]
    assert out.warnings == [("UserWarning", "Node won't run successors. Use Flow.")] * 3


def test_set_params_replaces_the_dict_object(m: ModuleType) -> None:
    node = m.Node()
    first = {"a": 1}
    node.set_params(first)
    assert node.params is first
    second = {"b": 2}
    node.set_params(second)
    assert node.params is second and node.params == {"b": 2}
    first["c"] = 3
    assert node.params == {"b": 2}


# --- Flow orchestration ---------------------------------------------------------------------------


def test_flow_routes_on_actions_and_post_gets_the_last_action(m: ModuleType) -> None:
    def scenario(m, ev):
        class Step(m.Node):
            def __init__(self, name, action=None):
                super().__init__()
                self.name, self.action = name, action

            def post(self, shared, prep_res, exec_res):
                ev.append(self.name)
                return self.action

        class Recording(m.Flow):
            def prep(self, shared):
                ev.append("flow.prep")
                return "flow-prep-result"

            def post(self, shared, prep_res, exec_res):
                ev.append(("flow.post", prep_res, exec_res))
                return ("flow-result", exec_res)

        start, left, right, end = (
            Step("start", "left"),
            Step("L", "done"),
            Step("R"),
            Step("end", "finish"),
        )
        start - "left" >> left
        start - "right" >> right
        left - "done" >> end
        right >> end
        return Recording(start=start).run({})

    out = same_as_pocketflow(scenario, m)
    assert out.events == [
        "flow.prep",
        "start",
        "L",
        "end",
        ("flow.post", "flow-prep-result", "finish"),
    ]
    assert out.result == ("flow-result", "finish")
    assert out.warnings == []


def test_flow_run_returns_the_last_action(m: ModuleType) -> None:
    class Last(m.Node):
        def post(self, shared, prep_res, exec_res):
            return "finished"

    first = m.Node()
    first >> Last()
    assert m.Flow(start=first).run({}) == "finished"


def test_flow_ends_warnings(m: ModuleType) -> None:
    def scenario(m, ev):
        class Says(m.Node):
            def __init__(self, action):
                super().__init__()
                self.action = action

            def post(self, shared, prep_res, exec_res):
                ev.append(self.action)
                return self.action

        # 1. An action with no matching successor (successors exist): warns and ends.
        a = Says("missing")
        a - "x" >> Says("unreached")
        a - "y" >> Says("unreached")
        ev.append(m.Flow(start=a).run({}))
        # 2. None action, only named successors: the text shows 'None'.
        b = Says(None)
        b - "only" >> Says("unreached")
        ev.append(m.Flow(start=b).run({}))
        # 3. Falsy actions mean "default".
        for falsy in (None, "", 0, False):
            c = Says(falsy)
            c >> Says("reached")
            ev.append(m.Flow(start=c).run({}))
        # 4. No successors at all: ends silently.
        ev.append(m.Flow(start=Says("anything")).run({}))

    out = same_as_pocketflow(scenario, m)
    assert out.warnings == [
        ("UserWarning", "Flow ends: 'missing' not found in ['x', 'y']"),
        ("UserWarning", "Flow ends: 'None' not found in ['only']"),
    ]
    assert out.events == [
        "missing",
        "missing",
        None,
        None,
        *[item for falsy in (None, "", 0, False) for item in (falsy, "reached", "reached")],
        "anything",
        "anything",
    ]


def test_each_visit_runs_a_shallow_copy(m: ModuleType) -> None:
    def scenario(m, ev):
        class Looper(m.Node):
            def __init__(self):
                super().__init__()
                self.count = 0  # rebound on the copy: every visit starts from 0
                self.history = []  # mutable: shared by every copy
                self.params = {"original": True}

            def prep(self, shared):
                self.count += 1
                self.history.append(self.count)
                self.seen = "set on the copy"
                shared["visits"] = shared.get("visits", 0) + 1
                return self.count

            def post(self, shared, prep_res, exec_res):
                ev.append((prep_res, self.count, list(self.history)))
                return "again" if shared["visits"] < 3 else "stop"

        looper = Looper()
        looper - "again" >> looper
        flow = m.Flow(start=looper)
        flow.run({})
        ev.append((looper.count, looper.history, looper.params, hasattr(looper, "seen")))

    out = same_as_pocketflow(scenario, m)
    assert out.events == [
        (1, 1, [1]),
        (1, 1, [1, 1]),
        (1, 1, [1, 1, 1]),
        (0, [1, 1, 1], {"original": True}, False),
    ]
    assert out.warnings == [("UserWarning", "Flow ends: 'stop' not found in ['again']")]


def test_the_object_run_is_called_on_is_not_copied(m: ModuleType) -> None:
    class Counting(m.Node):
        def exec(self, prep_res):
            self.ran = getattr(self, "ran", 0) + 1

    class MyFlow(m.Flow):
        def prep(self, shared):
            self.prepared = True

        def post(self, shared, prep_res, exec_res):
            self.posted = True

    node = Counting()
    node.run({})
    node.run({})
    assert node.ran == 2
    flow = MyFlow(start=Counting())
    flow.run({})
    assert (flow.prepared, flow.posted) == (True, True)
    assert not hasattr(flow.start_node, "ran")


def test_one_params_dict_per_pass_shared_by_every_node(m: ModuleType) -> None:
    def scenario(m, ev):
        tags = Tags()

        class Step(m.Node):
            def __init__(self, name):
                super().__init__()
                self.name = name

            def prep(self, shared):
                ev.append((self.name, tags(self.params), dict(self.params)))
                self.params[self.name] = True  # later nodes of the same pass see it

        a, b, c = Step("a"), Step("b"), Step("c")
        a.set_params({"preset": "overwritten"})
        a >> b >> c
        flow = m.Flow(start=a)
        flow.set_params({"k": 1})
        tags(flow.params)
        flow.run({})
        flow.run({})
        ev.append((tags(flow.params), flow.params, a.params))

    out = same_as_pocketflow(scenario, m)
    assert out.events == [
        ("a", 1, {"k": 1}),
        ("b", 1, {"k": 1, "a": True}),
        ("c", 1, {"k": 1, "a": True, "b": True}),
        ("a", 2, {"k": 1}),
        ("b", 2, {"k": 1, "a": True}),
        ("c", 2, {"k": 1, "a": True, "b": True}),
        (0, {"k": 1}, {"preset": "overwritten"}),
    ]


def test_nested_flows_forward_params_and_branch_on_the_inner_last_action(m: ModuleType) -> None:
    def scenario(m, ev):
        tags = Tags()

        class Step(m.Node):
            def __init__(self, name, action=None):
                super().__init__()
                self.name, self.action = name, action

            def prep(self, shared):
                ev.append((self.name, tags(self.params), dict(self.params)))

            def post(self, shared, prep_res, exec_res):
                return self.action

        inner_start = Step("inner1")
        inner_start >> Step("inner2", "inner_done")
        inner = m.Flow(start=inner_start)
        first = Step("outer1")
        first >> inner
        inner - "inner_done" >> Step("outer-after")
        inner >> Step("never")
        outer = m.Flow(start=first)
        outer.set_params({"from": "outer"})
        return outer.run({})

    out = same_as_pocketflow(scenario, m)
    assert out.events == [
        ("outer1", 0, {"from": "outer"}),
        ("inner1", 1, {"from": "outer"}),  # the inner flow copies the params it was given
        ("inner2", 1, {"from": "outer"}),
        ("outer-after", 0, {"from": "outer"}),
    ]
    assert out.result is None and out.warnings == []


def test_errors_in_prep_and_post_propagate_without_retry(m: ModuleType) -> None:
    def scenario_for(where: str) -> Scenario:
        def scenario(m, ev):
            class N(m.Node):
                def prep(self, shared):
                    ev.append("prep")
                    if where == "prep":
                        raise Boom("in prep")

                def exec(self, prep_res):
                    ev.append("exec")

                def exec_fallback(self, prep_res, exc):
                    ev.append("fallback")

                def post(self, shared, prep_res, exec_res):
                    ev.append("post")
                    if where == "post":
                        raise Boom("in post")
                    return "next"

            n = N(max_retries=3)
            n >> m.Node()
            after = m.Node()
            n - "next" >> after
            return m.Flow(start=n).run({})

        return scenario

    prep = same_as_pocketflow(scenario_for("prep"), m)
    assert (prep.events, prep.error) == (["prep"], ("Boom", "in prep"))
    post = same_as_pocketflow(scenario_for("post"), m)
    assert (post.events, post.error) == (["prep", "exec", "post"], ("Boom", "in post"))


def test_async_node_in_a_sync_flow_raises(m: ModuleType) -> None:
    def scenario(m, ev):
        class Sync(m.Node):
            def post(self, shared, prep_res, exec_res):
                ev.append("sync")

        class Async(m.AsyncNode):
            async def prep_async(self, shared):
                ev.append("never")

        s = Sync()
        s >> Async()
        return m.Flow(start=s).run({})

    out = same_as_pocketflow(scenario, m)
    assert (out.events, out.error) == (["sync"], ("RuntimeError", "Use run_async."))


# --- retries and fallback -------------------------------------------------------------------------


def test_retries_wait_and_fallback(m: ModuleType, sleeps: list[tuple[str, float]]) -> None:
    def scenario(m, ev):
        sleeps.clear()

        class Flaky(m.Node):
            def __init__(self, failures, **kwargs):
                super().__init__(**kwargs)
                self.failures = failures
                self.calls = 0

            def exec(self, prep_res):
                self.calls += 1
                ev.append(("exec", prep_res, self.calls, list(sleeps)))
                if self.calls <= self.failures:
                    raise Boom(f"fail {self.calls}")
                return "ok"

            def exec_fallback(self, prep_res, exc):
                ev.append(("fallback", prep_res, str(exc), type(exc.__context__).__name__))
                return "fell back"

            def prep(self, shared):
                return "item"

            def post(self, shared, prep_res, exec_res):
                return exec_res

        ev.append(Flaky(2, max_retries=3, wait=0.25).run({}))
        sleeps.clear()
        ev.append(Flaky(5, max_retries=3, wait=0.5).run({}))
        ev.append(list(sleeps))  # no sleep after the last attempt
        sleeps.clear()
        ev.append(Flaky(1, max_retries=2).run({}))  # wait=0: never sleeps
        ev.append(list(sleeps))

    out = same_as_pocketflow(scenario, m)
    assert out.events == [
        ("exec", "item", 1, []),
        ("exec", "item", 2, [("sleep", 0.25)]),
        ("exec", "item", 3, [("sleep", 0.25), ("sleep", 0.25)]),
        "ok",
        ("exec", "item", 1, []),
        ("exec", "item", 2, [("sleep", 0.5)]),
        ("exec", "item", 3, [("sleep", 0.5), ("sleep", 0.5)]),
        ("fallback", "item", "fail 3", "NoneType"),
        "fell back",
        [("sleep", 0.5), ("sleep", 0.5)],
        ("exec", "item", 1, []),
        ("exec", "item", 2, []),
        "ok",
        [],
    ]


def test_default_fallback_reraises_the_last_exception(m: ModuleType) -> None:
    def scenario(m, ev):
        class Failing(m.Node):
            def exec(self, prep_res):
                ev.append("exec")
                raise Boom(f"attempt {len(ev)}")

        try:
            Failing(max_retries=3).run({})
        except Boom as exc:
            ev.append((str(exc), exc.__cause__, type(exc.__context__).__name__))

    out = same_as_pocketflow(scenario, m)
    assert out.events == ["exec", "exec", "exec", ("attempt 3", None, "NoneType")]


def test_fallback_raising_a_new_error_chains_the_original(m: ModuleType) -> None:
    def scenario(m, ev):
        class N(m.Node):
            def exec(self, prep_res):
                raise Boom("original")

            def exec_fallback(self, prep_res, exc):
                raise RuntimeError("from fallback")

        try:
            N(max_retries=2).run({})
        except RuntimeError as exc:
            ev.append((str(exc), type(exc.__context__).__name__, str(exc.__context__)))

    out = same_as_pocketflow(scenario, m)
    assert out.events == [("from fallback", "Boom", "original")]


@pytest.mark.parametrize("max_retries", [0, -1])
def test_no_attempts_means_exec_is_never_called(m: ModuleType, max_retries: int) -> None:
    def scenario(m, ev):
        class Sync(m.Node):
            def prep(self, shared):
                return "p"

            def exec(self, prep_res):
                ev.append("exec")

            def exec_fallback(self, prep_res, exc):
                ev.append("fallback")

            def post(self, shared, prep_res, exec_res):
                return ("post", prep_res, exec_res)

        class Batch(m.BatchNode):
            def prep(self, shared):
                return [1, 2]

            def exec(self, item):
                ev.append("exec")

            def post(self, shared, prep_res, exec_res):
                return ("post", prep_res, exec_res)

        class Async(m.AsyncNode):
            async def exec_async(self, prep_res):
                ev.append("exec")

            async def post_async(self, shared, prep_res, exec_res):
                return ("post", prep_res, exec_res)

        class AsyncBatch(m.AsyncBatchNode):
            async def prep_async(self, shared):
                return [1, 2]

            async def exec_async(self, item):
                ev.append("exec")

            async def post_async(self, shared, prep_res, exec_res):
                return ("post", prep_res, exec_res)

        class AsyncParallel(m.AsyncParallelBatchNode):
            async def prep_async(self, shared):
                return [1, 2]

            async def exec_async(self, item):
                ev.append("exec")

            async def post_async(self, shared, prep_res, exec_res):
                return ("post", prep_res, exec_res)

        ev.append(Sync(max_retries=max_retries).run({}))
        ev.append(Batch(max_retries=max_retries).run({}))
        ev.append(asyncio.run(Async(max_retries=max_retries).run_async({})))
        ev.append(asyncio.run(AsyncBatch(max_retries=max_retries).run_async({})))
        ev.append(asyncio.run(AsyncParallel(max_retries=max_retries).run_async({})))

    out = same_as_pocketflow(scenario, m)
    assert out.events == [
        ("post", "p", None),
        ("post", [1, 2], [None, None]),
        ("post", None, None),
        ("post", [1, 2], [None, None]),
        ("post", [1, 2], [None, None]),
    ]


def test_base_exceptions_are_not_retried(m: ModuleType) -> None:
    def scenario(m, ev):
        class Sync(m.Node):
            def exec(self, prep_res):
                ev.append("exec")
                raise Interrupt()

            def exec_fallback(self, prep_res, exc):
                ev.append("fallback")

        class Batch(m.BatchNode):
            def prep(self, shared):
                return [1, 2]

            def exec(self, item):
                ev.append(("item", item))
                raise Interrupt()

            def exec_fallback(self, prep_res, exc):
                ev.append("fallback")

        for node in (Sync(max_retries=3), Batch(max_retries=3)):
            try:
                node.run({})
            except Interrupt:
                ev.append("interrupted")

    out = same_as_pocketflow(scenario, m)
    assert out.events == ["exec", "interrupted", ("item", 1), "interrupted"]


def test_cur_retry_inside_exec_and_exec_fallback(m: ModuleType) -> None:
    """Only the readings inside exec/exec_fallback of sync nodes: the rest differs on purpose."""

    def scenario(m, ev):
        class Inner(m.Node):
            def exec(self, prep_res):
                ev.append(("inner", self.cur_retry))
                if self.cur_retry < 1:
                    raise Boom()

        class Outer(m.Node):
            def exec(self, prep_res):
                ev.append(("outer", self.cur_retry))
                if self.cur_retry == 1:
                    Inner(max_retries=2).run({})
                    ev.append(("outer after inner", self.cur_retry))
                raise Boom()

            def exec_fallback(self, prep_res, exc):
                ev.append(("fallback", self.cur_retry))

        class Batch(m.BatchNode):
            def prep(self, shared):
                return ["a", "b"]

            def exec(self, item):
                ev.append((item, self.cur_retry))
                raise Boom()

            def exec_fallback(self, item, exc):
                ev.append((item, "fallback", self.cur_retry))

        Outer(max_retries=3).run({})
        Batch(max_retries=2).run({})

    out = same_as_pocketflow(scenario, m)
    assert out.events == [
        ("outer", 0),
        ("outer", 1),
        ("inner", 0),
        ("inner", 1),
        ("outer after inner", 1),
        ("outer", 2),
        ("fallback", 2),
        ("a", 0),
        ("a", 1),
        ("a", "fallback", 1),
        ("b", 0),
        ("b", 1),
        ("b", "fallback", 1),
    ]


def test_retry_settings_are_read_live_during_the_retry_loop(m: ModuleType) -> None:
    """PocketFlow re-reads self.max_retries, self.wait, self.exec and self.exec_fallback at every
    attempt, so a node may change them from inside exec (give up early, swap its exec)."""

    def scenario(m, ev):
        class GiveUp(m.Node):
            def exec(self, prep_res):
                ev.append("exec")
                self.max_retries = 1  # "do not retry this one"
                raise Boom()

            def exec_fallback(self, prep_res, exc):
                return "gave up"

            def post(self, shared, prep_res, exec_res):
                return exec_res

        class Swap(m.Node):
            def exec(self, prep_res):
                ev.append("first exec")
                self.exec = lambda prep_res: "second exec"
                raise Boom()

            def post(self, shared, prep_res, exec_res):
                return exec_res

        class BatchGiveUp(m.BatchNode):
            def prep(self, shared):
                return ["a", "b"]

            def exec(self, item):
                ev.append(item)
                self.max_retries = 1
                raise Boom()

            def exec_fallback(self, item, exc):
                return "gave up"

            def post(self, shared, prep_res, exec_res):
                return exec_res

        ev.append(GiveUp(max_retries=3).run({}))
        ev.append(Swap(max_retries=2).run({}))
        ev.append(BatchGiveUp(max_retries=3).run({}))

    out = same_as_pocketflow(scenario, m)
    assert out.events == [
        "exec",
        "gave up",
        "first exec",
        "second exec",
        "a",
        "b",
        ["gave up", "gave up"],
    ]


def test_batch_nodes_call_the_per_item_exec_cooperatively(m: ModuleType) -> None:
    """PocketFlow's batch nodes run each item through ``super(<BatchClass>, self)._exec(item)``,
    so a mixin placed after the batch class in the MRO wraps every item (logging, timing,
    custom retry) and its per-item ``_exec`` is honoured."""

    def scenario(m, ev):
        class PerItem(m.Node):
            def _exec(self, prep_res):
                ev.append(("sync item", prep_res))
                return super()._exec(prep_res)

        class AsyncPerItem(m.AsyncNode):
            async def _exec(self, prep_res):
                ev.append(("async item", prep_res))
                return await super()._exec(prep_res)

        class Batch(m.BatchNode, PerItem):
            def prep(self, shared):
                return [1, 2]

            def exec(self, item):
                return item * 10

            def post(self, shared, prep_res, exec_res):
                return exec_res

        class AsyncBatch(m.AsyncBatchNode, AsyncPerItem):
            async def prep_async(self, shared):
                return [3, 4]

            async def exec_async(self, item):
                return item * 10

            async def post_async(self, shared, prep_res, exec_res):
                return exec_res

        class AsyncParallel(m.AsyncParallelBatchNode, AsyncPerItem):
            async def prep_async(self, shared):
                return [5, 6]

            async def exec_async(self, item):
                return item * 10

            async def post_async(self, shared, prep_res, exec_res):
                return exec_res

        ev.append(Batch().run({}))
        ev.append(asyncio.run(AsyncBatch().run_async({})))
        ev.append(asyncio.run(AsyncParallel().run_async({})))

    out = same_as_pocketflow(scenario, m)
    assert out.events == [
        ("sync item", 1),
        ("sync item", 2),
        [10, 20],
        ("async item", 3),
        ("async item", 4),
        [30, 40],
        ("async item", 5),
        ("async item", 6),
        [50, 60],
    ]


def test_max_retries_must_be_an_int(m: ModuleType) -> None:
    """PocketFlow loops over ``range(max_retries)``: a float fails with TypeError."""

    def scenario(m, ev):
        class N(m.Node):
            def exec(self, prep_res):
                ev.append("exec")
                return "ran"

        return N(max_retries=2.0).run({})

    out = same_as_pocketflow(scenario, m)
    assert out.error == ("TypeError", "'float' object cannot be interpreted as an integer")
    assert out.events == []


# --- BatchNode ------------------------------------------------------------------------------------


def test_batch_node_results_in_order_and_post_gets_the_list(m: ModuleType) -> None:
    def scenario(m, ev):
        items = [3, 1, 2]

        class Square(m.BatchNode):
            def prep(self, shared):
                return items

            def exec(self, item):
                ev.append(("exec", item))
                return item * item

            def post(self, shared, prep_res, exec_res):
                ev.append((prep_res is items, type(exec_res).__name__, exec_res))
                return "done"

        return Square().run({})

    out = same_as_pocketflow(scenario, m)
    assert out.events == [("exec", 3), ("exec", 1), ("exec", 2), (True, "list", [9, 1, 4])]
    assert out.result == "done"


def test_batch_node_generator_prep_is_consumed_lazily(m: ModuleType) -> None:
    def scenario(m, ev):
        def items():
            for i in range(3):
                ev.append(("yield", i))
                yield i
            ev.append("generator exhausted")

        class Gen(m.BatchNode):
            def prep(self, shared):
                self.gen = items()
                return self.gen

            def exec(self, item):
                ev.append(("exec", item))
                return item + 10

            def post(self, shared, prep_res, exec_res):
                ev.append((prep_res is self.gen, inspect.getgeneratorstate(prep_res), exec_res))
                ev.append(list(prep_res))

        Gen().run({})

    out = same_as_pocketflow(scenario, m)
    assert out.events == [
        ("yield", 0),
        ("exec", 0),
        ("yield", 1),
        ("exec", 1),
        ("yield", 2),
        ("exec", 2),
        "generator exhausted",
        (True, "GEN_CLOSED", [10, 11, 12]),
        [],
    ]


def test_batch_node_none_prep_is_empty(m: ModuleType) -> None:
    def scenario(m, ev):
        class Empty(m.BatchNode):
            def exec(self, item):
                ev.append("exec")

            def post(self, shared, prep_res, exec_res):
                ev.append((prep_res, exec_res))

        Empty().run({})

    out = same_as_pocketflow(scenario, m)
    assert out.events == [(None, [])]


class _FalsyIterable:
    """Iterates two items but is falsy (like an object with __len__ lying, or a custom bool)."""

    def __bool__(self) -> bool:
        return False

    def __iter__(self):
        return iter(["x", "y"])


@pytest.mark.parametrize(
    "prep_value",
    [
        pytest.param([], id="empty-list"),
        pytest.param((), id="empty-tuple"),
        pytest.param("", id="empty-str"),
        pytest.param(0, id="zero"),
        pytest.param(False, id="False"),
        pytest.param(_FalsyIterable(), id="falsy-iterable"),
        pytest.param(np.array([1, 2]), id="numpy-array"),
        pytest.param("ab", id="str"),
        pytest.param(5, id="non-iterable"),
    ],
)
def test_batch_node_prep_truthiness(m: ModuleType, prep_value: Any) -> None:
    """PocketFlow iterates ``prep_res or []``: any falsy prep means no items, and a value whose
    truth is ambiguous (numpy array) raises ValueError before any item runs."""

    def scenario(m, ev):
        class B(m.BatchNode):
            def prep(self, shared):
                return prep_value

            def exec(self, item):
                ev.append(("exec", str(item)))
                return str(item)

            def post(self, shared, prep_res, exec_res):
                return exec_res

        return B().run({})

    same_as_pocketflow(scenario, m)


def test_batch_node_per_item_retries_wait_and_fallback(
    m: ModuleType, sleeps: list[tuple[str, float]]
) -> None:
    def scenario(m, ev):
        sleeps.clear()

        class Items(m.BatchNode):
            def prep(self, shared):
                self.attempts = {}
                return ["ok", "flaky", "broken", "ok2"]

            def exec(self, item):
                n = self.attempts[item] = self.attempts.get(item, 0) + 1
                ev.append((item, n, len(sleeps)))
                if (item == "flaky" and n < 3) or item == "broken":
                    raise Boom(f"{item} attempt {n}")
                return f"{item} done"

            def exec_fallback(self, item, exc):
                ev.append(("fallback", item, str(exc)))
                return f"{item} fallback"

            def post(self, shared, prep_res, exec_res):
                ev.append(dict(self.attempts))
                return exec_res

        return Items(max_retries=3, wait=0.5).run({})

    out = same_as_pocketflow(scenario, m)
    assert out.events == [
        ("ok", 1, 0),
        ("flaky", 1, 0),
        ("flaky", 2, 1),
        ("flaky", 3, 2),
        ("broken", 1, 2),
        ("broken", 2, 3),
        ("broken", 3, 4),
        ("fallback", "broken", "broken attempt 3"),
        ("ok2", 1, 4),
        {"ok": 1, "flaky": 3, "broken": 3, "ok2": 1},
    ]
    assert out.result == ["ok done", "flaky done", "broken fallback", "ok2 done"]
    assert sleeps == [("sleep", 0.5)] * 4


def test_batch_node_failing_item_aborts_the_batch(m: ModuleType) -> None:
    def scenario(m, ev):
        def items():
            for i in range(5):
                ev.append(("yield", i))
                yield i

        class Batch(m.BatchNode):
            def prep(self, shared):
                return items()

            def exec(self, item):
                ev.append(("exec", item))
                if item == 2:
                    raise Boom(f"item {item}")
                return item

            def post(self, shared, prep_res, exec_res):
                ev.append("post")

        try:
            Batch(max_retries=2).run({})
        except Boom as exc:
            ev.append(("caught", str(exc), exc.args, exc.__cause__))

    out = same_as_pocketflow(scenario, m)
    assert out.events == [
        ("yield", 0),
        ("exec", 0),
        ("yield", 1),
        ("exec", 1),
        ("yield", 2),
        ("exec", 2),
        ("exec", 2),
        ("caught", "item 2", ("item 2",), None),
    ]


def test_batch_node_fallback_error_propagates(m: ModuleType) -> None:
    def scenario(m, ev):
        class Batch(m.BatchNode):
            def prep(self, shared):
                return [1, 2]

            def exec(self, item):
                raise Boom("exec")

            def exec_fallback(self, item, exc):
                ev.append(("fallback", item))
                raise KeyError(item)

        try:
            Batch().run({})
        except KeyError as exc:
            ev.append((exc.args, type(exc.__context__).__name__))

    out = same_as_pocketflow(scenario, m)
    assert out.events == [("fallback", 1), ((1,), "Boom")]


def test_batch_node_in_a_flow_and_nested_batches(m: ModuleType) -> None:
    def scenario(m, ev):
        class Inner(m.BatchNode):
            def prep(self, shared):
                return shared["xs"]

            def exec(self, x):
                return x * self.params["factor"]

            def post(self, shared, prep_res, exec_res):
                shared["out"] = exec_res

        class Outer(m.BatchNode):
            def prep(self, shared):
                return [[1, 2], [3]]

            def exec(self, xs):  # runs a whole flow with a batch inside each item
                inner_shared = {"xs": xs}
                flow = m.Flow(start=Inner())
                flow.set_params({"factor": self.params["factor"]})
                flow.run(inner_shared)
                return inner_shared["out"]

            def post(self, shared, prep_res, exec_res):
                shared["outer"] = exec_res
                return "next"

        class Report(m.Node):
            def prep(self, shared):
                ev.append(("report", shared["outer"], dict(self.params)))

        outer = Outer()
        outer - "next" >> Report()
        flow = m.Flow(start=outer)
        flow.set_params({"factor": 10})
        flow.run({})

    out = same_as_pocketflow(scenario, m)
    assert out.events == [("report", [[10, 20], [30]], {"factor": 10})]


# --- BatchFlow ------------------------------------------------------------------------------------


def test_batch_flow_params_merge_and_post_arguments(m: ModuleType) -> None:
    def scenario(m, ev):
        tags = Tags()
        batches = [{"k": "first", "i": 1}, {"i": 2}, {}]

        class Step(m.Node):
            def __init__(self, name):
                super().__init__()
                self.name = name
                self.visits = 0

            def prep(self, shared):
                self.visits += 1
                ev.append((self.name, self.visits, tags(self.params), dict(self.params)))
                return "default"

        class Batches(m.BatchFlow):
            def prep(self, shared):
                return batches

            def post(self, shared, prep_res, exec_res):
                ev.append(("post", prep_res is batches, exec_res))
                return "after"

        a = Step("a")
        a >> Step("b")
        flow = Batches(start=a)
        flow.set_params({"k": "flow", "shared": True})
        tags(flow.params)
        ev.append(flow.run({}))
        ev.append((flow.params, a.params, a.visits))

    out = same_as_pocketflow(scenario, m)
    assert out.events == [
        ("a", 1, 1, {"k": "first", "shared": True, "i": 1}),
        ("b", 1, 1, {"k": "first", "shared": True, "i": 1}),
        ("a", 1, 2, {"k": "flow", "shared": True, "i": 2}),
        ("b", 1, 2, {"k": "flow", "shared": True, "i": 2}),
        ("a", 1, 3, {"k": "flow", "shared": True}),
        ("b", 1, 3, {"k": "flow", "shared": True}),
        ("post", True, None),
        "after",
        ({"k": "flow", "shared": True}, {}, 0),
    ]
    assert out.warnings == []


@pytest.mark.parametrize("prep_value", [None, [], ()], ids=repr)
def test_batch_flow_empty_prep(m: ModuleType, prep_value: Any) -> None:
    def scenario(m, ev):
        class Never(m.Node):
            def prep(self, shared):
                ev.append("never")

        class Empty(m.BatchFlow):
            def prep(self, shared):
                return prep_value

            def post(self, shared, prep_res, exec_res):
                ev.append(("post", prep_res, exec_res))

        return Empty(start=Never()).run({})

    out = same_as_pocketflow(scenario, m)
    assert out.events == [("post", [], None)]  # prep_res is `prep() or []`
    assert out.result is None


def test_batch_flow_generator_prep(m: ModuleType) -> None:
    def scenario(m, ev):
        def params():
            for i in range(2):
                ev.append(("yield", i))
                yield {"i": i}

        class Step(m.Node):
            def prep(self, shared):
                ev.append(("node", self.params["i"]))

        class Gen(m.BatchFlow):
            def prep(self, shared):
                self.gen = params()
                return self.gen

            def post(self, shared, prep_res, exec_res):
                ev.append((prep_res is self.gen, list(prep_res), exec_res))

        Gen(start=Step()).run({})

    out = same_as_pocketflow(scenario, m)
    assert out.events == [
        ("yield", 0),
        ("node", 0),
        ("yield", 1),
        ("node", 1),
        (True, [], None),
    ]


def test_nested_batch_flows_merge_params_inner_keys_win(m: ModuleType) -> None:
    def scenario(m, ev):
        class Grade(m.Node):
            def prep(self, shared):
                ev.append(("leaf", dict(self.params)))
                shared.setdefault("grades", []).append(
                    (self.params["school"], self.params["class"], self.params["student"])
                )

        class Students(m.BatchFlow):
            def prep(self, shared):
                ev.append(("inner prep", dict(self.params)))
                return [
                    {"student": f"{self.params['class']}-s{i}", "level": "student"}
                    for i in range(2)
                ]

            def post(self, shared, prep_res, exec_res):
                ev.append(("inner post", self.params["class"], len(prep_res), exec_res))

        class Classes(m.BatchFlow):
            def prep(self, shared):
                return [{"class": c, "level": "class"} for c in ("A", "B")]

            def post(self, shared, prep_res, exec_res):
                ev.append(("outer post", prep_res, exec_res))

        school = Classes(start=Students(start=Grade()))
        school.set_params({"school": "S", "level": "school"})
        shared = {}
        school.run(shared)
        ev.append(shared["grades"])

    out = same_as_pocketflow(scenario, m)
    leaf = [
        ("leaf", {"school": "S", "level": "student", "class": c, "student": f"{c}-s{i}"})
        for c in ("A", "B")
        for i in range(2)
    ]
    assert out.events == [
        ("inner prep", {"school": "S", "level": "class", "class": "A"}),
        *leaf[:2],
        ("inner post", "A", 2, None),
        ("inner prep", {"school": "S", "level": "class", "class": "B"}),
        *leaf[2:],
        ("inner post", "B", 2, None),
        (
            "outer post",
            [{"class": "A", "level": "class"}, {"class": "B", "level": "class"}],
            None,
        ),
        [("S", c, f"{c}-s{i}") for c in ("A", "B") for i in range(2)],
    ]


def test_batch_flow_failure_aborts_the_loop(m: ModuleType) -> None:
    def scenario(m, ev):
        class Step(m.Node):
            def exec(self, prep_res):
                ev.append(("exec", self.params["i"]))
                if self.params["i"] == 1:
                    raise Boom(f"param set {self.params['i']}")

        class Batches(m.BatchFlow):
            def prep(self, shared):
                return [{"i": i} for i in range(4)]

            def post(self, shared, prep_res, exec_res):
                ev.append("post")

        return Batches(start=Step(max_retries=2)).run({})

    out = same_as_pocketflow(scenario, m)
    assert out.events == [("exec", 0), ("exec", 1), ("exec", 1)]
    assert out.error == ("Boom", "param set 1")


def test_batch_flow_in_a_flow_continues_on_default(m: ModuleType) -> None:
    def scenario(m, ev):
        class Step(m.Node):
            def __init__(self, name):
                super().__init__()
                self.name = name

            def prep(self, shared):
                ev.append((self.name, dict(self.params)))

        class Batches(m.BatchFlow):
            def prep(self, shared):
                return [{"x": 1}, {"x": 2}]

        first = Step("first")
        batches = Batches(start=Step("inside"))
        first >> batches >> Step("after")
        flow = m.Flow(start=first)
        flow.set_params({"outer": True})
        return flow.run({})

    out = same_as_pocketflow(scenario, m)
    assert out.events == [
        ("first", {"outer": True}),
        ("inside", {"outer": True, "x": 1}),
        ("inside", {"outer": True, "x": 2}),
        ("after", {"outer": True}),
    ]
    assert out.result is None and out.warnings == []


def test_batch_flow_non_dict_params_raise(m: ModuleType) -> None:
    def scenario(m, ev):
        class Bad(m.BatchFlow):
            def prep(self, shared):
                return [{"ok": 1}, ["not", "a", "dict"]]

        class Step(m.Node):
            def prep(self, shared):
                ev.append(dict(self.params))

        return Bad(start=Step()).run({})

    out = same_as_pocketflow(scenario, m)
    assert out.events == [{"ok": 1}]
    assert out.error is not None and out.error[0] == "TypeError"


# --- user attributes on batch classes -------------------------------------------------------------

# Names a PocketFlow user may well use for their own state on a BatchNode/BatchFlow subclass
# (PocketFlow gives them no meaning), with plausible values.
USER_ATTRIBUTES = {
    "progress": [],
    "backend": "openai",
    "workers": ["alice", "bob"],
    "timeout": "30s",
    "on_error": "skip",
    "chunksize": 0,
    "batch_stats": {"done": 0},
}


def test_batch_node_user_attributes_have_no_special_meaning(m: ModuleType) -> None:
    def scenario_for(attr: str, value: Any) -> Scenario:
        def scenario(m, ev):
            class B(m.BatchNode):
                def __init__(self):
                    super().__init__()
                    setattr(self, attr, value)

                def prep(self, shared):
                    return [1, 2]

                def exec(self, item):
                    return item * 2

                def post(self, shared, prep_res, exec_res):
                    return (exec_res, getattr(self, attr))

            return B().run({})

        return scenario

    got = {attr: observe(scenario_for(attr, v), m) for attr, v in USER_ATTRIBUTES.items()}
    ref = {attr: observe(scenario_for(attr, v), pocketflow) for attr, v in USER_ATTRIBUTES.items()}
    assert got == ref


def test_batch_flow_user_attributes_have_no_special_meaning(m: ModuleType) -> None:
    def scenario_for(attr: str, value: Any) -> Scenario:
        def scenario(m, ev):
            class Step(m.Node):
                def prep(self, shared):
                    shared.setdefault("seen", []).append(self.params["i"])

            class BF(m.BatchFlow):
                def __init__(self, start):
                    super().__init__(start)
                    setattr(self, attr, value)

                def prep(self, shared):
                    return [{"i": 1}, {"i": 2}]

            shared = {}
            BF(Step()).run(shared)
            return shared["seen"]

        return scenario

    got = {attr: observe(scenario_for(attr, v), m) for attr, v in USER_ATTRIBUTES.items()}
    ref = {attr: observe(scenario_for(attr, v), pocketflow) for attr, v in USER_ATTRIBUTES.items()}
    assert got == ref


# --- async family ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["AsyncNode", "AsyncBatchNode", "AsyncParallelBatchNode", "AsyncFlow"]
)
def test_sync_run_of_an_async_node_raises(m: ModuleType, name: str) -> None:
    def scenario(m, ev):
        node = getattr(m, name)()
        if name == "AsyncFlow":
            node.start(m.AsyncNode())
        try:
            node.run({})
        except RuntimeError as exc:
            ev.append(str(exc))
        node >> m.Node()
        node.run({})  # warns first, then raises

    out = same_as_pocketflow(scenario, m)
    assert out.events == ["Use run_async."]
    assert out.error == ("RuntimeError", "Use run_async.")
    assert out.warnings == [("UserWarning", "Node won't run successors. Use Flow.")]


def test_run_async_with_successors_warns(m: ModuleType) -> None:
    def scenario(m, ev):
        class A(m.AsyncNode):
            async def post_async(self, shared, prep_res, exec_res):
                ev.append("ran")
                return "default"

        a = A()
        a >> A()
        ev.append(asyncio.run(a.run_async({})))
        flow = m.AsyncFlow(start=A())
        flow >> A()
        ev.append(asyncio.run(flow.run_async({})))

    out = same_as_pocketflow(scenario, m)
    assert out.events == ["ran", "default", "ran", "default"]
    assert out.warnings == [("UserWarning", "Node won't run successors. Use AsyncFlow.")] * 2


def test_async_node_lifecycle_retries_and_fallback(
    m: ModuleType, sleeps: list[tuple[str, float]]
) -> None:
    def scenario(m, ev):
        sleeps.clear()

        class Flaky(m.AsyncNode):
            def __init__(self, failures, **kwargs):
                super().__init__(**kwargs)
                self.failures, self.calls = failures, 0

            async def prep_async(self, shared):
                ev.append("prep")
                return "p"

            def exec(self, prep_res):  # a sync exec on an AsyncNode is never called
                ev.append("sync exec")

            async def exec_async(self, prep_res):
                self.calls += 1
                ev.append(("exec", prep_res, self.calls, list(sleeps)))
                if self.calls <= self.failures:
                    raise Boom(f"fail {self.calls}")
                return "ok"

            async def exec_fallback_async(self, prep_res, exc):
                ev.append(("fallback", str(exc)))
                return "fell back"

            async def post_async(self, shared, prep_res, exec_res):
                return (prep_res, exec_res)

        ev.append(asyncio.run(Flaky(1, max_retries=2, wait=0.3).run_async({})))
        ev.append(asyncio.run(Flaky(9, max_retries=2, wait=0.3).run_async({})))

        class NoFallback(m.AsyncNode):
            async def exec_async(self, prep_res):
                raise Boom("no fallback")

        asyncio.run(NoFallback(max_retries=2).run_async({}))

    out = same_as_pocketflow(scenario, m)
    assert out.events == [
        "prep",
        ("exec", "p", 1, []),
        ("exec", "p", 2, [("asleep", 0.3)]),
        ("p", "ok"),
        "prep",
        ("exec", "p", 1, [("asleep", 0.3)]),
        ("exec", "p", 2, [("asleep", 0.3), ("asleep", 0.3)]),
        ("fallback", "fail 2"),
        ("p", "fell back"),
    ]
    assert out.error == ("Boom", "no fallback")


@pytest.mark.parametrize("name", ["AsyncBatchNode", "AsyncParallelBatchNode"])
def test_async_batch_nodes_reject_none_prep(m: ModuleType, name: str) -> None:
    def scenario(m, ev):
        class B(getattr(m, name)):
            async def exec_async(self, item):
                ev.append("exec")

            async def post_async(self, shared, prep_res, exec_res):
                ev.append("post")

        return asyncio.run(B().run_async({}))

    out = same_as_pocketflow(scenario, m)
    assert out.error == ("TypeError", "'NoneType' object is not iterable")
    assert out.events == []


def test_async_batch_node_runs_items_one_after_another(m: ModuleType) -> None:
    def scenario(m, ev):
        class B(m.AsyncBatchNode):
            async def prep_async(self, shared):
                return [3, 1, 2]

            async def exec_async(self, item):
                ev.append(("start", item))
                await asyncio.sleep(item * 0.002)
                ev.append(("end", item))
                return item * 10

            async def post_async(self, shared, prep_res, exec_res):
                return exec_res

        return asyncio.run(B().run_async({}))

    out = same_as_pocketflow(scenario, m)
    assert out.events == [
        ("start", 3),
        ("end", 3),
        ("start", 1),
        ("end", 1),
        ("start", 2),
        ("end", 2),
    ]
    assert out.result == [30, 10, 20]


def test_async_parallel_batch_node_keeps_input_order(m: ModuleType) -> None:
    def scenario(m, ev):
        class P(m.AsyncParallelBatchNode):
            async def prep_async(self, shared):
                return [3, 1, 2]

            async def exec_async(self, item):
                ev.append(("start", item))
                await asyncio.sleep(item * 0.01)
                ev.append(("end", item))
                return item * 10

            async def post_async(self, shared, prep_res, exec_res):
                ev.append(("post", type(exec_res).__name__, exec_res))
                return exec_res

        return asyncio.run(P().run_async({}))

    out = same_as_pocketflow(scenario, m)
    assert out.events == [
        ("start", 3),
        ("start", 1),
        ("start", 2),
        ("end", 1),
        ("end", 2),
        ("end", 3),
        ("post", "list", [30, 10, 20]),
    ]
    assert out.result == [30, 10, 20]


def test_async_parallel_batch_node_failure_and_its_siblings(m: ModuleType) -> None:
    def scenario(m, ev):
        class P(m.AsyncParallelBatchNode):
            async def prep_async(self, shared):
                return [1, 2, 3]

            async def exec_async(self, item):
                await asyncio.sleep(item * 0.02)
                if item == 1:
                    raise Boom("item 1")
                ev.append(("finished", item))
                return item

            async def post_async(self, shared, prep_res, exec_res):
                ev.append("post")

        async def main():
            try:
                await P().run_async({})
            except Boom as exc:
                ev.append(("caught", str(exc)))
            await asyncio.sleep(0.06)

        asyncio.run(main())

    out = observe(scenario, m)
    if m is pocketflow:  # gather: the siblings run on after the error
        assert out.events == [("caught", "item 1"), ("finished", 2), ("finished", 3)]
    else:  # deliberate: they are cancelled before the error reaches the caller
        assert out.events == [("caught", "item 1")]


def test_async_flow_mixes_sync_and_async_nodes(m: ModuleType) -> None:
    def scenario(m, ev):
        class AsyncStep(m.AsyncNode):
            def __init__(self, name, action=None):
                super().__init__()
                self.name, self.action = name, action

            async def prep_async(self, shared):
                ev.append((self.name, dict(self.params)))

            async def post_async(self, shared, prep_res, exec_res):
                return self.action

        class SyncStep(m.Node):
            def __init__(self, name, action=None):
                super().__init__()
                self.name, self.action = name, action

            def prep(self, shared):
                ev.append((self.name, dict(self.params)))

            def post(self, shared, prep_res, exec_res):
                return self.action

        class SyncBatch(m.BatchNode):
            def prep(self, shared):
                return [1, 2]

            def exec(self, item):
                return item + self.params["base"]

            def post(self, shared, prep_res, exec_res):
                ev.append(("sync batch", exec_res))

        class SyncBatchFlow(m.BatchFlow):
            def prep(self, shared):
                return [{"i": 1}, {"i": 2}]

        class Recording(m.AsyncFlow):
            async def prep_async(self, shared):
                ev.append("flow prep")
                return "flow-prep"

            async def post_async(self, shared, prep_res, exec_res):
                ev.append(("flow post", prep_res, exec_res))
                return exec_res

        start = AsyncStep("async1", "go")
        sync_flow = m.Flow(start=SyncStep("in sync flow"))
        batch_flow = SyncBatchFlow(start=SyncStep("in batch flow"))
        start - "go" >> SyncStep("sync1") >> SyncBatch() >> sync_flow
        sync_flow >> batch_flow >> AsyncStep("async2", "end")
        flow = Recording(start=start)
        flow.set_params({"base": 100})
        return asyncio.run(flow.run_async({}))

    out = same_as_pocketflow(scenario, m)
    assert out.events == [
        "flow prep",
        ("async1", {"base": 100}),
        ("sync1", {"base": 100}),
        ("sync batch", [101, 102]),
        ("in sync flow", {"base": 100}),
        ("in batch flow", {"base": 100, "i": 1}),
        ("in batch flow", {"base": 100, "i": 2}),
        ("async2", {"base": 100}),
        ("flow post", "flow-prep", "end"),
    ]
    assert out.result == "end" and out.warnings == []


def test_async_flow_ends_warning_and_branching(m: ModuleType) -> None:
    def scenario(m, ev):
        class Says(m.AsyncNode):
            def __init__(self, action):
                super().__init__()
                self.action = action

            async def post_async(self, shared, prep_res, exec_res):
                ev.append(self.action)
                return self.action

        inner = m.AsyncFlow(start=Says("inner_done"))
        unknown = Says("unknown")
        inner - "inner_done" >> unknown
        inner >> Says("never")
        unknown - "other" >> Says("never")
        outer = m.AsyncFlow(start=inner)
        return asyncio.run(outer.run_async({}))

    out = same_as_pocketflow(scenario, m)
    assert out.events == ["inner_done", "unknown"]
    assert out.result == "unknown"
    assert out.warnings == [("UserWarning", "Flow ends: 'unknown' not found in ['other']")]


def test_async_flow_run_and_async_batch_flow_run_sync_paths(m: ModuleType) -> None:
    def scenario(m, ev):
        class SyncStep(m.Node):
            def post(self, shared, prep_res, exec_res):
                ev.append("sync ran")
                return "sync-action"

        class AsyncStep(m.AsyncNode):
            async def prep_async(self, shared):
                ev.append("async ran")

        # AsyncFlow.run works while every child is sync, and returns the last action.
        ev.append(m.AsyncFlow(start=SyncStep()).run({}))

        class Batches(m.AsyncBatchFlow):
            async def prep_async(self, shared):
                ev.append("never: sync run uses the sync prep")
                return [{"i": 1}]

        class ParallelBatches(m.AsyncParallelBatchFlow):
            async def prep_async(self, shared):
                ev.append("never")
                return [{"i": 1}]

        # AsyncBatchFlow.run / AsyncParallelBatchFlow.run silently do nothing.
        ev.append(Batches(start=SyncStep()).run({}))
        ev.append(ParallelBatches(start=AsyncStep()).run({}))
        # With an async child the sync path raises when it reaches it.
        first = SyncStep()
        first - "sync-action" >> AsyncStep()
        m.AsyncFlow(start=first).run({})

    out = same_as_pocketflow(scenario, m)
    assert out.events == ["sync ran", "sync-action", None, None, "sync ran"]
    assert out.error == ("RuntimeError", "Use run_async.")


@pytest.mark.parametrize("name", ["AsyncBatchFlow", "AsyncParallelBatchFlow"])
def test_async_batch_flows(m: ModuleType, name: str) -> None:
    def scenario(m, ev):
        tags = Tags()
        batches = [{"i": 1, "k": "item"}, {"i": 2}]

        class Step(m.AsyncNode):
            def __init__(self, name):
                super().__init__()
                self.name = name

            async def prep_async(self, shared):
                ev.append(("start", self.name, tags(self.params), dict(self.params)))
                # i=1 ends well after all of i=2's sub-flow: the only timing race has 14 ms margin
                await asyncio.sleep(0.02 if self.params["i"] == 1 else 0.003)
                ev.append(("end", self.name, self.params["i"]))

        class Sync(m.Node):
            def prep(self, shared):
                ev.append(("sync", self.params["i"]))

        class Batches(getattr(m, name)):
            async def prep_async(self, shared):
                return batches

            async def post_async(self, shared, prep_res, exec_res):
                ev.append(("post", prep_res is batches, exec_res))
                return "after"

        a = Step("a")
        a >> Sync() >> Step("b")
        flow = Batches(start=a)
        flow.set_params({"k": "flow"})
        ev.append(asyncio.run(flow.run_async({})))

        class Empty(getattr(m, name)):
            async def post_async(self, shared, prep_res, exec_res):
                ev.append(("empty post", prep_res, exec_res))

        ev.append(asyncio.run(Empty(start=Step("never")).run_async({})))

    first, second = [
        ("start", "a", 0, {"i": 1, "k": "item"}),
        ("start", "a", 1, {"i": 2, "k": "flow"}),
    ]
    run_1 = [
        ("end", "a", 1),
        ("sync", 1),
        ("start", "b", 0, {"i": 1, "k": "item"}),
        ("end", "b", 1),
    ]
    run_2 = [
        ("end", "a", 2),
        ("sync", 2),
        ("start", "b", 1, {"i": 2, "k": "flow"}),
        ("end", "b", 2),
    ]
    if name == "AsyncBatchFlow":  # one param set after the other
        body = [first, *run_1, second, *run_2]
    else:  # all started at once, in order; the faster set (i=2) finishes first
        body = [first, second, *run_2, *run_1]
    out = same_as_pocketflow(scenario, m)
    assert out.events == [*body, ("post", True, None), "after", ("empty post", [], None), None]
    assert out.warnings == []


def test_async_parallel_batch_flow_failure_propagates(m: ModuleType) -> None:
    def scenario(m, ev):
        class Step(m.AsyncNode):
            async def exec_async(self, prep_res):
                await asyncio.sleep(0.02 * self.params["i"])
                ev.append(("exec", self.params["i"]))
                if self.params["i"] == 1:
                    raise Boom("set 1")

        class Batches(m.AsyncParallelBatchFlow):
            async def prep_async(self, shared):
                return [{"i": i} for i in range(3)]

            async def post_async(self, shared, prep_res, exec_res):
                ev.append("post")

        async def main():
            try:
                await Batches(start=Step()).run_async({})
            except Boom as exc:
                ev.append(("caught", str(exc)))
            await asyncio.sleep(0.06)

        asyncio.run(main())

    out = observe(scenario, m)
    if m is pocketflow:  # gather: run 2 goes on after the error
        assert out.events == [("exec", 0), ("exec", 1), ("caught", "set 1"), ("exec", 2)]
    else:  # deliberate: run 2 is cancelled first
        assert out.events == [("exec", 0), ("exec", 1), ("caught", "set 1")]


# --- warnings: attribution ------------------------------------------------------------------------


def test_library_warnings_can_be_silenced_by_module(m: ModuleType) -> None:
    """PocketFlow warns from its own module, so ``filterwarnings("ignore", module="pocketflow")``
    silences every library warning; the same filter on ``batchcore`` should do the same."""

    def trigger_all(m):
        a, b = m.Node(), m.Node()
        a >> b
        a >> b  # Overwriting successor (via >>)
        a.next(b)  # Overwriting successor (via next)
        a - "x" >> b
        a - "x" >> b  # Overwriting successor (via - "x" >>)
        a.run({})  # Node won't run successors. Use Flow.

        class Says(m.Node):
            def post(self, shared, prep_res, exec_res):
                return "missing"

        s = Says()
        s >> m.Node()
        m.Flow(start=s).run({})  # Flow ends: ...
        an = m.AsyncNode()
        an >> m.Node()
        asyncio.run(an.run_async({}))  # Node won't run successors. Use AsyncFlow.

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trigger_all(m)
    assert len(caught) == 6
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", module=m.__name__)
        trigger_all(m)
    assert [str(w.message) for w in caught] == []
