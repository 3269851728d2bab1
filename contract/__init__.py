"""The contract at the bottom of the house: what the ingress, the model replicas and the
engines agree on: the OpenAI wire format (`protocol`), errors with their HTTP meaning, the config
(the one reader of HF_SERVER_*), the endpoint and task tables, the Protocols between ingress and
replicas (`model_api`) and between tasks and engines (`engine`); docs/architecture.md lists them.

Packages import only those before them: contract -> hardware -> deployments -> serve_app. Nothing
here imports an HTTP framework, Ray or torch, so a model replica's own code never loads FastAPI.
"""
