# Checked by .ci/typecheck.sh: the revealed types on lines 7-15 (keep the line numbers).
import numpy as np
from aiva_cy import AIVANet, blas_info

net = AIVANet(seed=0)
a = np.zeros((4, 512), dtype=np.float32)
reveal_type(net.predict_proba(a))  # noqa: F821
reveal_type(net(a))  # noqa: F821
reveal_type(net.predict([0.0] * 512))  # noqa: F821
reveal_type(net.predict([[0.0] * 512]))  # noqa: F821
reveal_type(net.predict(a))  # noqa: F821
reveal_type(net.decide([0.0] * 512))  # noqa: F821
reveal_type(net.decide(a))  # noqa: F821
reveal_type(blas_info()["ilp64"])  # noqa: F821
reveal_type(net.decide([0.0] * 512, names=True))  # noqa: F821
