"""Mining: block templates and on-demand mining (:mod:`node.miner.miner`), the worker-process
pool (:mod:`node.miner.pool`) and the proof-of-work inner loop (:mod:`node.miner.hashing`).

Nothing is re-exported here: miner worker processes import only the pool and the hashing code.
"""
