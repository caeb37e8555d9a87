"""Running test work in several threads at once, with failures reported in the test."""
import threading
from typing import Callable, List


def in_threads(work: Callable[[int], object], n: int = 6) -> None:
    """Run work(0) .. work(n - 1) in n threads at once; re-raise the first failure here, in
    the test's own thread (an exception in a thread would otherwise only be printed)."""
    errors: List[BaseException] = []

    def guarded(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:   # reported below, in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def in_fork(work: Callable[[], bool], timeout: float = 120.0) -> None:
    """Run work() in a forked child of this process and fail here unless it returns True in
    time.  A child that hangs (a thread pool copied by fork waits for workers it does not
    have) is killed and reported, instead of hanging the suite."""
    import os
    import signal
    import time
    import warnings

    with warnings.catch_warnings():     # 3.12+ warns of fork in a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:                        # the child: exit 0 if work() holds, else nonzero
        code = 3
        try:
            code = 0 if work() else 1
        except BaseException:
            code = 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the forked child did not finish in {timeout:.0f} s")
        time.sleep(0.02)
    assert os.WIFEXITED(status), f"the forked child died (status {status})"
    code = os.WEXITSTATUS(status)
    assert code == 0, {1: "the forked child's results differ", 2: "the forked child raised"}.get(
        code, f"the forked child exited with {code}")
