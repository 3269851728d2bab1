"""The `hfserve` commands (main.py), run on an operator's machine: the launcher of
`hfserve serve`, HAProxy mode, the deploy plan, and the admin API's command-line clients."""
