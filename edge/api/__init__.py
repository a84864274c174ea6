"""The JSON admin API: router, HTTP plumbing, bearer auth, token store and endpoints.

``app.py`` (the handler) -> ``router.py`` (method + path) -> ``auth.py`` (bearer tokens)
-> ``tokens.py`` (endpoints) -> ``store.py`` (Redis); ``http.py`` holds errors, responses
and request bodies. See ``docs/api.md``.
"""
