"""`powlab testnet`: local networks of real nodes, as processes (cli, manifest, nodeconfig,
processes, control, tables) or under docker compose (docker). See lab/testnet/cli.py."""
