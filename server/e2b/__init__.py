"""The E2B-compatible API: E2B's SDKs (`e2b`, `e2b-code-interpreter`) against this center, unchanged.

An E2B sandbox is a session of this center (the same registry, limits, isolation and `max_sessions`);
its working folder, /home/user, is the session's workspace. The SDK reaches two places:
- control.py: the control plane at /e2b (E2B_API_URL): create, connect, list, get, kill, set_timeout,
  behind the center's tokens (sent as X-API-KEY);
- sandbox.py: what E2B serves inside a sandbox, at /e2b/sandbox (E2B_SANDBOX_URL): envd's health and
  files, the code interpreter's /execute; the sandbox is named by the E2b-Sandbox-Id header and its
  access token (X-Access-Token) is checked where the SDK sends it.
wire.py holds E2B's shapes: a sandbox as the API answers it, its errors, a result line.
"""
