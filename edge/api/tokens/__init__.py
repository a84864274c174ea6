"""API tokens: their records, bearer authentication and the /api/v1/tokens endpoints."""
