"""The port-forward API: ``POST /port-forward/ticket``, where a PAT buys a tunnel ticket."""
