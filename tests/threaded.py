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
