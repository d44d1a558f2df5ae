"""Parallel signature verification for block connection.

`cryptography` releases the GIL inside Ed25519 verification, so threads give real parallelism
here; the chain state takes this as its `verify_batch` and gets the same answers as the
sequential default, only sooner.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from consensus.validation import SignatureJob, verify_sequentially

PARALLEL_THRESHOLD = 64  # below this, handing work to threads costs more than it saves


class ParallelVerifier:
    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="sigverify")

    def __call__(self, jobs: Sequence[SignatureJob]) -> list[bool]:
        if self.threads == 1 or len(jobs) < PARALLEL_THRESHOLD:
            return verify_sequentially(jobs)
        size = -(-len(jobs) // self.threads)
        chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
        results: list[bool] = []
        for part in self._pool.map(verify_sequentially, chunks):
            results.extend(part)
        return results

    def close(self) -> None:
        self._pool.shutdown(wait=True)
