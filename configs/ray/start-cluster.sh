#!/usr/bin/env bash
# A Ray cluster of ise:cuda containers (Dockerfile.cuda), one per node, and ise on its head node,
# for configs/vllm-ray-multinode.toml: tensor parallel within each node, pipeline parallel across.
#
#   on the head node:        configs/ray/start-cluster.sh head
#   on every other node:     configs/ray/start-cluster.sh worker HEAD_IP
#   on the head node:        configs/ray/start-cluster.sh status   (until it counts every node's GPUs)
#   then, on the head node:  configs/ray/start-cluster.sh serve    (ise on port 8000 of the head)
#   on each node, to stop:   configs/ray/start-cluster.sh stop
#
# Each node needs Docker with the NVIDIA Container Toolkit and the same image. The containers use
# the host's network, as Ray and NCCL open many ports between nodes: let the nodes reach each other.
# Environment:
#   IMAGE      the image, the same on every node (default ise:cuda)
#   NODE_IP    this node's address on the network the nodes share (default: the first of hostname -I)
#   CACHE      a volume or host directory (owned by uid 10001) for /cache (default: volume ise-cache)
#   HF_TOKEN   for gated models such as the config's; every node downloads the weights it loads
#   NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME   the network interface to use, where a node has several
set -euo pipefail

IMAGE=${IMAGE:-ise:cuda}
NODE_IP=${NODE_IP:-$(hostname -I | awk '{print $1}')}
CACHE=${CACHE:-ise-cache}
NAME=ise-ray
CONFIG="$(cd "$(dirname "$0")/.." && pwd)/vllm-ray-multinode.toml"
RAY_PORT=6379

# This node's container, running `ray start --block` (a Ray node) until stopped.
# --ipc=host: NCCL and vLLM's workers share memory through /dev/shm, which Docker limits to 64 MB.
# VLLM_HOST_IP: the address vLLM gives the other nodes for this one; it must be NODE_IP.
# Variables given as `-e NAME` alone pass on the host's value, and nothing where it is unset.
run_node() {
    docker run --detach --name "$NAME" \
        --gpus all --network host --ipc host \
        -e VLLM_HOST_IP="$NODE_IP" \
        -e HF_TOKEN -e NCCL_SOCKET_IFNAME -e GLOO_SOCKET_IFNAME \
        -v "$CACHE":/cache \
        -v "$CONFIG":/etc/ise/ise.toml:ro \
        --entrypoint ray \
        "$IMAGE" start --block --node-ip-address="$NODE_IP" "$@"
}

case "${1:-}" in
    head) run_node --head --port="$RAY_PORT" ;;
    worker) run_node --address="${2:?usage: $0 worker HEAD_IP}:$RAY_PORT" ;;
    status) docker exec "$NAME" ray status ;;
    # In the head's container, so that vLLM finds the Ray cluster it is part of.
    serve) docker exec "$NAME" ise serve --engine vllm --config /etc/ise/ise.toml ;;
    stop) docker rm --force "$NAME" ;;
    *)
        sed -n '2,9p' "$0" >&2
        exit 2
        ;;
esac
