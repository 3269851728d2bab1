"""Call a running hfserve cluster from another Ray job through typed DeploymentHandles.

    python examples/handle_call.py            # connects to the local cluster (address="auto")
    python examples/handle_call.py HOST:PORT  # or to a given GCS address
"""

import sys

import ray
from ray import serve

from contract.embedding_protocol import EmbeddingRequest
from contract.protocol import ChatCompletionRequest

ray.init(address=sys.argv[1] if len(sys.argv) > 1 else "auto", log_to_driver=False)

chat = serve.get_app_handle("smollm2-135m-instruct")
request = ChatCompletionRequest(
    model="smollm2-135m-instruct",
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    temperature=0,
    max_tokens=32,
)
response = chat.chat.remote(request).result()  # a ChatCompletionResponse
print("chat:", response.choices[0].message.content)

for chunk in chat.options(stream=True).chat_stream.remote(request):  # ChatCompletionChunk objects
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()

embedder = serve.get_app_handle("all-minilm-l6-v2")
vectors = embedder.embed.remote(EmbeddingRequest(model="all-minilm-l6-v2", input=["hello", "world"])).result()
print("embeddings:", len(vectors.data), "x", len(vectors.data[0].embedding))
