"""Port-forward tunnels: tickets, sessions, the bridge and the live registry."""
