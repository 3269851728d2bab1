"""What runs inside model replicas: the ModelServer deployment, tasks, engines, sources."""
