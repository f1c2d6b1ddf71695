"""Mistral-v2-style reverse workflows, loaded from YAML and run on OpenStack TaskFlow."""
