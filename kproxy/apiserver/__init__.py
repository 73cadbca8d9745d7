"""The Kubernetes API server of a lab (aiohttp); see apicore for the package docstring."""
