"""Certificates as records in Redis: the repository every writer shares (``edge cert``, and
next the admin API and ACME issuance), and how a stored record reads back.

The PEM checks and the record schema still live in :mod:`edge.tls.material`, which the
workers' TLS store reads with; this package only stores and describes records.
"""
