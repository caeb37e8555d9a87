"""aiva_cy — AIVA's spiking decision core: 512 features in, a probability per tool out::

    from aiva_cy import AIVANet
    net = AIVANet(seed=0)
    tool, confidence, is_confident = net.decide(features)   # features: 512 numbers
"""
from aiva_cy._blas import blas_info
from aiva_cy._format import CheckpointError
from aiva_cy._threads import num_threads, set_num_threads, threads
from aiva_cy.net import AIVANet

__version__ = "0.1.0"
__all__ = ["AIVANet", "CheckpointError", "blas_info", "num_threads", "set_num_threads", "threads", "__version__"]
