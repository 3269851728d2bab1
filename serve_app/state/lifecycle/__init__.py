"""Run-time model lifecycle: POST /models/load and /models/unload, LRU within a memory budget.

Each run-time model is its own Serve application, deployed through the Serve API by the
reconciler that runs in the state actor (one per cluster): its records (store.py) are the
desired state, Serve's applications the actual one. See docs/architecture.md.
"""
