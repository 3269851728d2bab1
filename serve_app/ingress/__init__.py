"""What the ingress replica runs: the `Ingress` deployment (deployment.py), HTTP (http/),
the routes (routes/), the gateway between a parsed request and the models (gateway/), the
model directory and the Serve handles it calls the models through."""
