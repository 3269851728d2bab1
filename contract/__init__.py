"""The contract at the bottom of the house: what the ingress, the model replicas and the
engines agree on.

- `protocol`: the OpenAI wire format (pydantic models only);
- `errors`: the error hierarchy with its HTTP meaning (rendered by serve_app/ingress/http);
- `config`: the application args and the one reader of HF_SERVER_* variables;
- `endpoints`: the endpoint table (route path, request model, handle methods);
- `tasks`: the task table, found through the `hfserve.tasks` entry points;
- `model_api`, `engine`: the Protocols between ingress and model replicas, and between
  tasks and engines; `vectors`: the one encoding of embedding vectors.

Package dependency order, each importing only those before it:
contract -> hardware -> deployments -> serve_app. Nothing here imports an HTTP framework,
Ray or torch, so a model replica's own code never loads FastAPI or Starlette.
"""
