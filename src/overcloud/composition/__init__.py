"""Service composition: Kubernetes-style patterns placed onto an OverCloud's boxes, stitched
by name, run (Podman or plain processes) and kept running. See docs/services.md."""
