"""Multi-node kproxy: a control plane and node agents sharing one etcd."""
