"""Scale-out across machines on Ray Serve: each replica loads the net and batches the rows
sent to it with ``@serve.batch`` (``pip install "aiva_cy[serve]"``).

::

    from ray import serve
    from aiva_cy.serve.ray import application

    handle = serve.run(application("weights/aiva.npz", num_replicas=4))
    tool, confidence, is_confident = handle.decide.remote(features).result()

Each replica is a Ray actor holding one net; Ray Serve spreads the calls over the replicas,
and each replica merges the rows waiting for it into one ``predict_proba`` call.  Calls
are stateless, like ``net.predict_proba``: stateful streams (``net.forward``) have no
place behind a load balancer that sends consecutive calls to different replicas.

Over HTTP (Ray Serve's proxy, port 8000 by default), POST ``{"x": [512 numbers],
"confidence": 0.7}`` to get ``{"tool", "confidence", "is_confident", "probabilities"}``.
"""
from __future__ import annotations

import asyncio
import math
import os
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

try:
    import ray
    from ray import serve
except ImportError as exc:   # the module only makes sense with Ray
    raise ImportError(f'aiva_cy.serve.ray needs Ray Serve ({exc}); install it with: '
                      f'pip install "aiva_cy[serve]"') from None

from aiva_cy import set_num_threads
from aiva_cy._checks import as_float32, check_finite, float_arg, int_arg, numeric_array
from aiva_cy.net import AIVANet

__all__ = ["AIVADeployment", "application"]

Checkpoint = Union[str, "os.PathLike[str]", AIVANet]


def _level(confidence: Any) -> float:
    level = float_arg("confidence", confidence, 0.0)
    if level > 1.0:
        raise ValueError(f"confidence must be in [0, 1], got {confidence!r}")
    return level


@serve.deployment
class AIVADeployment:
    """One replica: a net loaded from ``checkpoint`` (a file written by ``net.save``, at a
    path every node can read, or an AIVANet, which Ray pickles to each replica), and one
    ``@serve.batch`` queue in front of its ``predict_proba``.

    ``threads``: the BLAS threads this replica's products use
    (:func:`aiva_cy.set_num_threads`); by default the CPUs Ray assigned to the replica
    (``ray_actor_options={"num_cpus": ...}``), since Ray sets ``OMP_NUM_THREADS=1`` in
    workers that were given none, which OpenBLAS would follow.
    """

    def __init__(self, checkpoint: Checkpoint, max_batch: int = 256, max_delay: float = 0.002,
                 precision: Optional[str] = None, threads: Optional[int] = None) -> None:
        max_batch = int_arg("max_batch", max_batch, 1)
        max_delay = float_arg("max_delay", max_delay, 0.0)
        if isinstance(checkpoint, AIVANet):
            self.net = checkpoint if precision is None else checkpoint.set_precision(precision)
        else:
            self.net = AIVANet.load(checkpoint, precision=precision)
        if threads is None:
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
            threads = max(1, int(math.floor(cpus))) if cpus else None
        if threads is not None:
            set_num_threads(threads)
        batched: Any = self._batched   # serve.batch's wrapper (its type does not say so)
        batched.set_max_batch_size(max_batch)
        batched.set_batch_wait_timeout_s(max_delay)

    def _row(self, x: Any) -> np.ndarray:
        arr = numeric_array("x", x)
        n = self.net.input_size
        if arr.shape != (n,):
            raise ValueError(f"x must be one row of shape ({n},), got {arr.shape}")
        arr = as_float32("x", arr)
        check_finite("x", arr)   # here, so that a bad row fails only its own caller
        return arr

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.002)
    async def _batched(self, rows: List[np.ndarray]) -> List[np.ndarray]:
        # In a thread: the products release the GIL, and the replica's event loop goes on
        # queueing the next batch's rows meanwhile.
        probs = await asyncio.to_thread(self.net.predict_proba, np.stack(rows))
        return list(probs)

    async def predict_proba(self, x: Any) -> np.ndarray:
        """Probabilities (num_tools,) of one row."""
        result: np.ndarray = await self._batched(self._row(x))
        return result

    async def predict(self, x: Any) -> int:
        return int((await self.predict_proba(x)).argmax())

    async def decide(self, x: Any, confidence: float = 0.7, *, names: bool = False
                     ) -> Tuple[Any, float, bool]:
        """``(tool, confidence, is_confident)``, like ``net.decide`` (``names=True``: the
        tool's name from the net's tool_names)."""
        from aiva_cy.serve._batcher import _decision, _names_for
        level = _level(confidence)
        tool_names = _names_for(self.net, names)
        return _decision(await self.predict_proba(x), level, tool_names)

    async def __call__(self, request: Any) -> Dict[str, Any]:
        """HTTP: ``{"x": [...], "confidence": 0.7}`` in, the decision and the
        probabilities out (with ``"tool_name"`` where the net has tool_names).  Through a handle, ``handle.remote(body)`` takes the same body as
        a dict."""
        body = await request.json() if hasattr(request, "json") else request
        if not isinstance(body, dict) or "x" not in body:
            raise ValueError('the request body must be a JSON object with "x" (one row)')
        level = _level(body.get("confidence", 0.7))
        p = await self.predict_proba(body["x"])
        tool = int(p.argmax())
        out = {"tool": tool, "confidence": float(p[tool]),
               "is_confident": bool(p[tool] >= level), "probabilities": p.tolist()}
        names = getattr(self.net, "tool_names", None)
        if names is not None:
            out["tool_name"] = names[tool]
        return out


def application(checkpoint: Checkpoint, *, max_batch: int = 256, max_delay: float = 0.002,
                num_replicas: int = 1, num_cpus: Optional[float] = None,
                precision: Optional[str] = None, threads: Optional[int] = None,
                name: str = "AIVADeployment") -> Any:
    """The deployment, bound to its arguments: pass it to ``serve.run``.

    ``num_cpus``: CPUs Ray reserves for each replica (and, unless ``threads`` says
    otherwise, the BLAS threads it runs)."""
    num_replicas = int_arg("num_replicas", num_replicas, 1)
    options: Dict[str, Any] = {"num_replicas": num_replicas, "name": name}
    if num_cpus is not None:
        options["ray_actor_options"] = {"num_cpus": float_arg("num_cpus", num_cpus, 0.0)}
    deployment: Any = AIVADeployment   # a serve Deployment (the decorator's type hides it)
    return deployment.options(**options).bind(checkpoint, max_batch, max_delay, precision,
                                              threads)
