"""The request log's endpoints: lists, search, stats, follow (any API token) and clear
(the admin token); the reading itself is :mod:`edge.observe.reqlog_query`."""
