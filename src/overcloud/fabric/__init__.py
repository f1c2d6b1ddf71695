"""The fabric's observability parts: the per-box flow agent and the Datastore (Prometheus) helpers.

``flowagent`` runs inside each box's network namespace and reports TCP flows between overlay
addresses; ``prometheus`` drives the Prometheus + node-exporter of the DevOps Post. Both are
standard library + pyroute2 / httpx only, so they start fast inside a box.
"""
