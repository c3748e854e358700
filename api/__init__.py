"""The HTTP API, one blueprint per resource: runs and images (runs.py), health and metrics (ops.py).

http.py holds what every route shares: authentication, request ids, the access log, CORS and
JSON errors. Routes parse, authorise, act and answer; Docker, SQL and sockets stay below them.
"""
