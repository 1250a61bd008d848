"""Ray actors as the evaluator: each actor holds the resident model, the driver keeps the rest.

`model.workers: N` puts N actors on a Ray cluster (one per GPU, or per `worker_cpus` CPU
threads). Each builds its own evaluator from the run's config (the model is loaded where it
runs, never shipped), so the expert folders and base model must be readable at the same paths
on every node. The strategy, the score cache, the budget and the checkpoints stay on the
driver (runs/scorer.py, runs/runner.py): this is one more implementation of the evaluator
seam, and every strategy, compare and hswarm use it unchanged.

Why a run on N actors scores exactly as a run on one process: a call's rows are cut into
units by a rule that does not depend on N, the blocks of `particles_per_forward` rows from the
call's first row, exactly the blocks a ResidentEvaluator forms in one process. Every actor
runs the same code on the same kind of device with the same thread count, so a unit's scores
do not depend on which actor ran it; results are gathered back in row order.

Each unit's rows go into the object store once (cast to the model's dtype first, as the
resident model would on loading them), so an iteration moves each candidate's weights once.
Units are handed to whichever actor is free. An actor that dies (killed, its process or node
lost) is replaced in the background and its unit is scored again by the next free actor; the
result is unchanged because the unit is. A driver that dies takes its actors with it, and
`--resume` starts new ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import torch

from ..config import ExpertsConfig, ModelConfig
from ..errors import ConfigError, ModelSwarmsError, RunError, first_line
from ..space import FlatSpace
from .evaluator import Evaluator, Overlong
from .objectives.utilities import ItemScores, Utility

log = logging.getLogger("modelswarms")

# Opens an actor's own evaluator from the run's config: (space, evaluator).
Build = Callable[[ExpertsConfig, ModelConfig], tuple[FlatSpace, Evaluator]]

# A unit that has killed this many actors is what kills them (a crash in native code, the
# node's memory): stop instead of killing the whole pool one actor at a time.
MAX_ATTEMPTS = 4
# A replacement that fails to start this many times in a row will not start.
MAX_START_FAILURES = 5


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("model.workers: Ray actors need the ray package; pip install "
                          "'modelswarms[ray]' (or remove model.workers)") from None
    return ray


def connect(ray: Any, address: str | None) -> None:
    """Start a local Ray (None) or join one; any failure is one line naming the key."""
    where = "model.workers: could not start a local Ray" if address is None else \
        f"model.ray_address: no Ray cluster at {address!r}"
    if address is None:
        # Ray starts workers at nice 15, so on a machine doing anything else the actors,
        # which do all of the run's work, get the leftovers (measured: 2 CPU actors no
        # faster than 1). Only for a Ray started here; RAY_worker_niceness set by the user
        # wins.
        os.environ.setdefault("RAY_worker_niceness", "0")
    else:
        host, _, port = address.removeprefix("ray://").rpartition(":")
        if host and port.isdigit():
            # Ray waits two minutes for an address where nothing listens, then exits
            try:
                socket.create_connection((host, int(port)), timeout=5).close()
            except OSError as err:
                raise ConfigError(f"{where} (nothing answers: {err})") from None
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except (Exception, SystemExit) as err:  # noqa: BLE001 - Ray raises many kinds, and exits
        raise ConfigError(f"{where} ({first_line(err, 200) or type(err).__name__})") from None


def space_digest(space: FlatSpace) -> str:
    text = "\n".join(f"{s.name}:{s.shape}" for s in space.slots)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class RayWorker:
    """The actor: one evaluator of this process's kind, built from the run's config."""

    def __init__(self, experts: ExpertsConfig, model: ModelConfig, threads: int, build: Build):
        torch.set_num_threads(threads)  # the thread count local runs are compared at
        self.error: ModelSwarmsError | None = None
        self.utilities: dict[int, Utility] = {}
        try:
            self.space, self.evaluator = build(experts, model)
        except ModelSwarmsError as err:  # the user's files: said on the driver in one line
            self.error = err

    def info(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        ev = self.evaluator
        backend = getattr(ev, "backend", None)
        return {"error": None, "space": space_digest(self.space), "dim": self.space.dim,
                "group": getattr(ev, "group_size", 1), "device": str(ev.device),
                # resident models copy rows into a buffer of this dtype; others read them as is
                "dtype": None if backend is None else str(backend.flat.dtype)}

    def _utility(self, token: int, boxed: list) -> Utility:
        # the ref arrives boxed so Ray does not resolve it every call: one copy per actor
        if token not in self.utilities:
            import ray

            self.utilities[token] = ray.get(boxed[0])
        return self.utilities[token]

    def score(self, token: int, boxed: list, vectors: torch.Tensor | None,
              items: list[dict]) -> tuple[list[ItemScores] | None, dict, Exception | None]:
        try:
            out = self.evaluator.score_many(vectors, items, self._utility(token, boxed))
        except ModelSwarmsError as err:  # raised again on the driver, as in one process
            return None, self.evaluator.drain_events(), err
        return out, self.evaluator.drain_events(), None

    def overlong(self, token: int, boxed: list, unit: None, items: list[dict]
                 ) -> tuple[list[Overlong | None] | None, dict, Exception | None]:
        """score's shape, so the driver's dispatch (and its actor restarts) carries it too."""
        try:
            found = self.evaluator.overlong(items, self._utility(token, boxed))
        except ModelSwarmsError as err:
            return None, self.evaluator.drain_events(), err
        return [found], self.evaluator.drain_events(), None

    def ensemble(self, token: int, boxed: list, vectors: torch.Tensor,
                 items: list[dict]) -> tuple[list[ItemScores] | None, dict, Exception | None]:
        try:
            if not hasattr(self.evaluator, "score_ensemble"):
                raise ConfigError("logit averaging: this evaluator cannot run experts side "
                                  "by side")
            out = [self.evaluator.score_ensemble(  # type: ignore[attr-defined]
                vectors, items, self._utility(token, boxed))]
        except ModelSwarmsError as err:
            return None, self.evaluator.drain_events(), err
        return out, self.evaluator.drain_events(), None


_SHARED: RayEvaluator | None = None  # the actors of this process, reused while the config fits


def running_actors() -> RayEvaluator | None:
    """The actors this process holds for its next search (None: none, or stopped)."""
    return _SHARED


def stop_actors() -> None:
    """Stop this process's actors now; otherwise they live until the process ends or a search
    with other experts or engine settings replaces them (Ray itself keeps running)."""
    if _SHARED is not None:
        _SHARED.close()


class RayEvaluator:
    """The evaluator seam over Ray actors; see the module's docstring."""

    device = torch.device("cpu")  # where the driver keeps candidates: strategies run here

    @classmethod
    def open(cls, experts: ExpertsConfig, model: ModelConfig, space: FlatSpace, build: Build
             ) -> RayEvaluator:
        """The actors for this config: those this process already started when the experts
        and engine settings are the same (compare's rows, the Python API's searches), else
        new ones (the old ones are stopped). `build` opens an actor's own evaluator from the
        config (runs/session.open_local: the pool kinds live above this module)."""
        global _SHARED
        ray = _ray()
        if not ray.is_initialized():
            connect(ray, model.ray_address)
        key = (experts.model_dump_json(), model.model_dump_json(), space_digest(space),
               ray.get_runtime_context().get_job_id())
        if _SHARED is not None and _SHARED.key == key:
            return _SHARED
        if _SHARED is not None:
            _SHARED.close()
        _SHARED = cls(experts, model, space, build, key)
        return _SHARED

    def __init__(self, experts: ExpertsConfig, model: ModelConfig, space: FlatSpace,
                 build: Build, key: tuple = ()):
        ray = _ray()
        self.ray, self.key = ray, key
        self.experts, self.space, self._build = experts, space, build
        assert model.workers is not None
        self.workers = model.workers
        gpu = model.device.startswith("cuda") or (
            model.device == "auto" and ray.cluster_resources().get("GPU", 0) >= 1)
        self._options: dict[str, Any] = (
            {"num_gpus": 1, "num_cpus": 1} if gpu else {"num_cpus": model.worker_cpus})
        self._threads = model.worker_cpus
        # an actor sees only its own GPU, as cuda:0
        self._model = model.model_copy(update={
            "device": "cuda" if gpu else "cpu", "workers": None, "ray_address": None})
        self._check_resources(gpu)
        self._remote = ray.remote(RayWorker)
        self.events: Counter = Counter()
        self._utilities: dict[int, tuple[Utility, Any]] = {}  # id -> (kept alive, its ref)
        self.actors = [self._start() for _ in range(self.workers)]
        self._starting: dict[Any, int] = {}  # replacements' readiness probes -> slot
        self.busy: dict[Any, tuple[int, int]] = {}
        self._start_failures = [0] * self.workers
        infos = self._get_infos(self.actors)
        self.group = infos[0]["group"]
        self.wire_dtype = (None if infos[0]["dtype"] is None
                           else getattr(torch, infos[0]["dtype"].removeprefix("torch.")))
        log.info("ray: %d actors on %s, %d candidates per unit", self.workers,
                 infos[0]["device"], self.group)

    def _check_resources(self, gpu: bool) -> None:
        have = self.ray.cluster_resources()
        kind, each = ("GPU", 1) if gpu else ("CPU", self._options["num_cpus"])
        if have.get(kind, 0) < self.workers * each:
            raise ConfigError(
                f"model.workers: {self.workers} actors of {each} {kind} need "
                f"{self.workers * each} {kind}s; the Ray cluster has {have.get(kind, 0):g} "
                "(fewer workers, or model.worker_cpus)")

    def _start(self):
        return self._remote.options(max_restarts=0, **self._options).remote(
            self.experts, self._model, self._threads, self._build)

    def _get_infos(self, actors: list) -> list[dict[str, Any]]:
        from ray.exceptions import RayActorError

        try:
            infos = self.ray.get([a.info.remote() for a in actors])
        except RayActorError as err:  # died loading (not our error: those come back below)
            self.close()
            raise RunError(f"ray: an actor did not start ({_last_line(err)})") from None
        for info in infos:
            if info["error"] is not None:
                self.close()
                raise info["error"]
        want = space_digest(self.space)
        if any(i["space"] != want or i["dim"] != self.space.dim for i in infos):
            self.close()
            raise ConfigError("model.workers: a Ray actor sees other expert tensors than this "
                              "process (are the expert folders the same on every node?)")
        return infos

    @property
    def starting_slots(self) -> set[int]:
        """The actor slots whose replacement is still starting (no work goes to them)."""
        return set(self._starting.values())

    def close(self) -> None:
        global _SHARED
        for actor in self.actors:
            with contextlib.suppress(Exception):  # already gone, or Ray already shut down
                self.ray.kill(actor)
        self.actors = []
        if _SHARED is self:
            _SHARED = None

    def drain_events(self) -> dict[str, int]:
        out = dict(self.events)
        self.events.clear()
        return out

    # The seam.
    def score_many(self, vectors: torch.Tensor | None, items: list[dict],
                   utility: Utility) -> list[ItemScores]:
        if vectors is None:
            units: list[Any] = [None]
        else:
            rows = vectors.detach().to("cpu")
            if self.wire_dtype is not None and rows.dtype != self.wire_dtype:
                # the actor's copy_ into its buffer rounds the same way: half the bytes moved
                rows = rows.to(self.wire_dtype)
            # clone: a view would carry its whole storage into the object store
            units = [self.ray.put(rows[s : s + self.group].clone())
                     for s in range(0, len(rows), self.group)]
        return self._dispatch("score", units, items, utility)

    def overlong(self, items: list[dict], utility: Utility) -> Overlong | None:
        """As a local evaluator's, asked of one actor (the models and tokenizers live there),
        through the dispatch that replaces an actor dying under it."""
        return self._dispatch("overlong", [None], items, utility)[0]  # type: ignore[return-value]

    def score_ensemble(self, vectors: torch.Tensor, items: list[dict],
                       utility: Utility) -> ItemScores:
        """Logit averaging of the rows of `vectors`: one unit, on one actor."""
        unit = self.ray.put(vectors.detach().to("cpu").clone())
        return self._dispatch("ensemble", [unit], items, utility)[0]

    def _boxed(self, utility: Utility) -> tuple[int, list]:
        token = id(utility)
        if token not in self._utilities:
            try:
                ref = self.ray.put(utility)
            except Exception as err:  # noqa: BLE001 - Ray wraps pickling errors variously
                raise ConfigError(
                    f"model.workers: utility {utility.name} cannot be sent to Ray actors "
                    f"({first_line(err, 200)}); run it without model.workers") from None
            # kept alive with it, so the id is not reused while the actors cache it
            self._utilities[token] = (utility, ref)
        return token, [self._utilities[token][1]]

    def _dispatch(self, method: str, units: list[Any], items: list[dict],
                  utility: Utility) -> list[ItemScores]:
        ray = self.ray
        from ray.exceptions import RayActorError

        token, boxed = self._boxed(utility)
        items_ref = ray.put(items)
        results: list[list[ItemScores] | None] = [None] * len(units)
        attempts = [0] * len(units)
        queue = deque(range(len(units)))
        starting = self.starting_slots
        idle = deque(s for s in range(len(self.actors)) if s not in starting)
        running: dict[Any, tuple[int, int]] = {}  # task ref -> (unit, slot)
        self.busy = running  # read by tests that kill actors holding work
        while queue or running:
            while queue and idle:
                u, slot = queue.popleft(), idle.popleft()
                attempts[u] += 1
                ref = getattr(self.actors[slot], method).remote(token, boxed, units[u],
                                                                 items_ref)
                running[ref] = (u, slot)
            ready, _ = ray.wait([*running, *self._starting], num_returns=1)
            ref = ready[0]
            if ref in self._starting:  # a replacement is up (or failed to start)
                slot = self._starting.pop(ref)
                if self._probe(ref, slot):
                    idle.append(slot)
                continue
            u, slot = running.pop(ref)
            try:
                out, events, error = ray.get(ref)
            except RayActorError as err:
                self._replace(slot, err)
                if attempts[u] >= MAX_ATTEMPTS:
                    raise RunError(f"ray: {attempts[u]} actors died scoring the same "
                                   f"candidates; the last: {first_line(err, 200)}") from None
                queue.appendleft(u)  # next free actor; its rows are in the store already
                continue
            self.events.update(events)
            idle.append(slot)
            if error is not None:
                raise error
            results[u] = out
        self.busy = {}
        return [r for unit in results for r in unit]  # type: ignore[union-attr]

    def _replace(self, slot: int, err: Exception) -> None:
        """Start a new actor in `slot`; it takes work once its model has loaded."""
        log.warning("ray: actor %d died (%s); starting another, its candidates are scored "
                    "again", slot, first_line(err, 200))
        self.events["ray_actor_restarts"] += 1
        with contextlib.suppress(Exception):  # unavailable is not always dead; or it is gone
            self.ray.kill(self.actors[slot])
        self.actors[slot] = self._start()
        self._starting[self.actors[slot].info.remote()] = slot

    def _probe(self, ref: Any, slot: int) -> bool:
        from ray.exceptions import RayActorError

        try:
            info = self.ray.get(ref)
        except RayActorError as err:
            if getattr(err, "actor_init_failed", False):  # it raised loading: so will the next
                raise RunError(f"ray: a replacement actor did not start ({_last_line(err)})"
                               ) from None
            self._start_failures[slot] += 1
            if self._start_failures[slot] >= MAX_START_FAILURES:
                raise RunError(f"ray: a replacement actor failed to start "
                               f"{MAX_START_FAILURES} times; the last: {first_line(err, 200)}"
                               ) from None
            self._replace(slot, err)
            return False
        if info["error"] is not None:
            raise info["error"]
        self._start_failures[slot] = 0
        return True


def _last_line(err: Exception) -> str:
    # a Ray error quoting a traceback ends with the original "Error: message" line
    return (str(err).strip().splitlines() or [type(err).__name__])[-1][:300]
