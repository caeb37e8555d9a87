from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

class Adam:
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    @property
    def step(self) -> int: ...
    @property
    def names(self) -> Tuple[str, ...]: ...
    @property
    def transposed(self) -> Tuple[bool, ...]: ...
    @property
    def shapes(self) -> Tuple[Tuple[int, ...], ...]: ...
    betas: Tuple[float, float]
    def __init__(self, shapes: Sequence[Sequence[int]], *, names: Optional[Sequence[str]] = ...,
                 transposed: Optional[Sequence[bool]] = ..., lr: float = ...,
                 betas: Tuple[float, float] = ..., eps: float = ...,
                 weight_decay: float = ...) -> None: ...
    def update(self, params: List[npt.NDArray[np.float32]],
               grads: List[npt.NDArray[np.float32]],
               bf16_out: Optional[List[npt.NDArray[np.uint16]]] = ...,
               grad_bounds: Optional[List[float]] = ...) -> None: ...
    def state_dict(self) -> Dict[str, Any]: ...
    def load_state_dict(self, state: Dict[str, Any]) -> None: ...
