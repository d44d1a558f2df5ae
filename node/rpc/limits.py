"""Default bounds of the RPC server; node/config.py uses them as the defaults of the matching
options, and :class:`node.rpc.server.RPCServer` as its own defaults."""

from __future__ import annotations

# Option max_rpc_batch: requests in one JSON-RPC batch. 3,000 listunspent calls in one batch
# built a 71 MB reply; bitcoind has no limit, but nobody needs more than this in one POST.
DEFAULT_MAX_RPC_BATCH = 1000
# Bytes of reply one batch may build before its further requests are refused unrun. The count
# bound above assumes small replies; an address index call may answer ~10 MB (50,000 rows), so
# 1,000 of them in one 100 kB POST would be 10 GB. A reply may pass this by its last answer.
MAX_RPC_BATCH_REPLY_BYTES = 64_000_000
# Option rpc_header_timeout: seconds a client gets to send complete request headers, and the
# longest a keep-alive connection may sit idle (bitcoind's rpcservertimeout is 30 s).
DEFAULT_RPC_HEADER_TIMEOUT = 10.0
# Option max_rpc_connections: simultaneous HTTP connections, /events and /ws streams included.
# Kept well below the usual 1024 open-file limit, which the P2P side and the database share.
DEFAULT_MAX_RPC_CONNECTIONS = 256
