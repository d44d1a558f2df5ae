"""`powlab testnet dashboard`: a live web view of a testnet (docs/dashboard.md).

``model`` holds what the page shows (blocks, tips, nodes, the activity log), bounded;
``collector`` fills it from the nodes' ``/events`` streams and RPC, and from the live run
records of `powlab attack` / `powlab scenario run`; ``server`` serves the page (``static/``)
and a small JSON/SSE API to it. The RPC credentials never leave this process.
"""
