"""The built-in tasks. Each module defines ``TASK``, a `contract.tasks.TaskSpec`, and is named
in the `hfserve.tasks` entry points of pyproject.toml; the task table (contract/tasks.py)
finds them there, beside any plug-in package's tasks."""
