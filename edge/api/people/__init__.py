"""Users, projects, memberships and personal access tokens, and the PAT-authenticated API."""
