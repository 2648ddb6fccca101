"""Remote backend: a served model (vLLM's ``/v1/completions`` or SGLang's ``/generate``) that continues exact
token-id prefixes. A probe at connect time finds what the server can give (whole distributions, scoring of drawn
tokens, or only a top-k) and exact power sampling runs only where the first two exist; the modes, the wire formats
and what holds under a grammar are in docs/backends.md ("Remote servers").

``client``: ``RemoteLM`` (the probe, the modes, log p and log q from what a server returned, deadlines, the thread
pool); ``vllm_api`` and ``sglang_api``: one wire format each behind the interface in ``wire``; ``masking``: a local
constraint applied to what a server returned.
"""

from __future__ import annotations

from .client import APIS, RemoteLM, bounded_log_z

__all__ = ["APIS", "RemoteLM", "bounded_log_z"]
