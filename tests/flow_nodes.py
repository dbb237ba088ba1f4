"""Module-level nodes for BatchFlow tests (importable by worker processes)."""

from __future__ import annotations

import os
import time
from typing import Any

from batchcore import BatchFlow, Flow, Node


class Load(Node):
    """Writes a per-run value into a shared scratch key, as the PocketFlow cookbook does."""

    def prep(self, shared: dict[str, Any]) -> Any:
        return self.params["input"]

    def exec(self, name: str) -> str:
        time.sleep(self.params.get("delay", 0.0))
        return f"pixels of {name}"

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
        shared["image"] = exec_res  # scratch key: every run writes the same key
        return "apply"


class Apply(Node):
    def prep(self, shared: dict[str, Any]) -> Any:
        time.sleep(self.params.get("delay", 0.0))  # another run may write `image` meanwhile
        return shared["image"]

    def exec(self, image: str) -> str:
        return f"{self.params['filter']}({image})"

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
        shared["filtered"] = exec_res
        return "save"


class Save(Node):
    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
        key = f"{self.params['input']}:{self.params['filter']}"
        shared["outputs"][key] = shared["filtered"]  # a dict written key by key
        shared["last_saved"] = key  # a plain value: the last run in batch order wins
        shared.setdefault("pids", {})[key] = os.getpid()
        return "saved"


class Fails(Node):
    def exec(self, prep_res: Any) -> Any:
        if self.params.get("input") == "b.jpg":
            raise ValueError("cannot decode b.jpg")


def image_subflow() -> Flow:
    load, apply, save = Load(), Apply(), Save()
    load - "apply" >> apply
    apply - "save" >> save
    return Flow(start=load)


class ImageBatch(BatchFlow):
    """The seed's image BatchFlow: one sub-flow run per (image, filter)."""

    def prep(self, shared: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"input": image, "filter": name}
            for image in shared["images"]
            for name in ("grayscale", "blur")
        ]

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
        shared["post_got"] = exec_res
        return "finished"


class ClassFlow(BatchFlow):
    """Outer level of a nested BatchFlow: one run per class."""

    def prep(self, shared: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"class": c, "level": "outer"} for c in ("a", "b")]


class StudentFlow(BatchFlow):
    """Inner level: one run per student of ``self.params["class"]``."""

    def prep(self, shared: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"student": f"{self.params['class']}{i}", "level": "inner"} for i in range(3)]


class Grade(Node):
    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        shared.setdefault("grades", {})[self.params["student"]] = dict(self.params)


class KeyedBatch(BatchFlow):
    """One run per key in ``shared["keys"]`` (duplicates allowed)."""

    def prep(self, shared: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"key": key, "i": i} for i, key in enumerate(shared["keys"])]


class WriteKey(Node):
    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        shared["by_key"][self.params["key"]] = self.params["i"]
        shared["last"] = self.params["i"]
