#!/bin/sh
# Links third_party/llama.cpp and third_party/ggml to the sources that the
# pinned ollama module ships, downloading the module when it is missing.
set -eu
cd "$(dirname "$0")/.."
dir=$(go list -m -f '{{.Dir}}' github.com/ollama/ollama)
if [ -z "$dir" ] || [ ! -d "$dir" ]; then
	go mod download github.com/ollama/ollama
	dir=$(go list -m -f '{{.Dir}}' github.com/ollama/ollama)
fi
ln -sfn "$dir/llama/llama.cpp" third_party/llama.cpp
ln -sfn "$dir/ml/backend/ggml/ggml" third_party/ggml
