"""kproxy: a real-network kube-proxy emulator for Kubernetes Service labs."""
