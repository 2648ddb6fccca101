"""Remote backend: a served model that continues exact token-id prefixes, over one of two wire protocols.

* ``api="vllm"``: a vLLM-compatible ``/v1/completions`` server (token-id ``prompt``, ``return_tokens_as_token_ids``).
* ``api="sglang"``: SGLang's native ``POST /generate`` (``input_ids``, ``sampling_params``, ``return_logprob``,
  ``logprob_start_len``, ``top_logprobs_num``; answers in ``meta_info`` as ``[logprob, token_id, text]`` triples).
* ``api="auto"`` (default): SGLang when ``GET /model_info`` (or the older ``/get_model_info``) answers with a
  ``model_path``, vLLM otherwise.

Exact MH needs, per generated token, log p (temperature 1) and log q (the proposal's normalized log-probability).
A capability probe at connect time finds out which of these the server can give. vLLM:

* ``full``: the server returns the full-vocabulary distribution for every generated token (vLLM started with
  ``--max-logprobs -1``, request ``logprobs=-1``). In vLLM's default ``raw_logprobs`` mode that is log p, and
  log q = log_softmax(log p / T); in ``processed_logprobs`` mode it is log q, and log p = log_softmax(T * log q).
  Which of the two is detected by asking for the same next-token distribution at two temperatures.
* ``score``: the server returns processed log-probabilities (log q) for sampled tokens only, and log p comes from
  one scoring request (``prompt_logprobs``) over the prefix and the drawn tokens (vLLM with
  ``--logprobs-mode processed_logprobs``).
* ``topk``: only the top-k log p is available. log q then needs log Z_t = log sum_v p_t(v)^alpha (alpha = 1/T),
  which top-k cannot give exactly; the server is refused with ``CapabilityError`` unless ``approximate=True``,
  where log Z_t is estimated inside its bounds [Z_k, Z_k + r * p_min^(alpha-1)] (Z_k the sum over the top k,
  r the mass outside them, p_min the smallest top-k probability): see ``bounded_log_z``. The widest gap seen is
  kept in ``max_log_z_gap``.

Every request disables truncation (top_k -1, top_p 1, min_p 0, no penalties): vLLM can otherwise load a model's
generation_config defaults (start it with ``--generation-config vllm``).

SGLang (checked against the 0.5.23 sources): by default the log-probability of each sampled token is taken from
softmax(logits / T) before any top-k/top-p/min-p filtering, i.e. log q; with ``SGLANG_RETURN_ORIGINAL_LOGPROB``
set (``RETURN_ORIGINAL_LOGPROB`` in mid-2025 releases) it is log_softmax(logits), i.e. log p. Input-token
log-probabilities (``input_token_logprobs`` from ``logprob_start_len``) are always log_softmax of the raw logits.
The probe asks for the same next-token top-k at temperatures 1 and 0.5 to tell the two apart, then:

* ``score`` (default SGLang): log q from the sampled tokens, log p from one scoring request over prefix + drawn
  tokens (``input_token_logprobs`` from ``logprob_start_len = len(prefix) - 1``).
* ``full`` (original log-probabilities): ``top_logprobs_num = vocab_size`` gives the whole temperature-1
  distribution per token (checked to sum to 1), log q = log_softmax(log p / T). Costs vocab_size entries per token.
* ``topk``: as for vLLM, only with ``approximate=True``; otherwise ``CapabilityError`` naming the variable to unset.

SGLang stops on its own EOS ids as well as on ``stop_token_ids`` (``ignore_eos`` would disable both), so a
continuation also counts as stopped when the server reports ``finish_reason`` ``{"type": "stop", "matched": id}``
for its last token.

Constraints. A request's ``JsonSchemaConstraint`` goes to the server with the row, as the server's own structured
output (vLLM ``structured_outputs: {"json": ...}``, falling back once to the older ``guided_json`` when the server
refuses that field with a 400; SGLang ``sampling_params.json_schema``). Every constraint, whatever its type, is
then replayed locally over the drawn tokens: the row is cut right after the token where the constraint finishes
and marked stopped, which is exact for a constraint that masks nothing (``StopStringConstraint``), and a drawn
token the local constraint does not allow is a ``CapabilityError`` (only JSON schemas are applied by a server).

The target under a mask is the step-wise renormalized masked model, whose normalizer needs the whole next-token
distribution:

* ``full`` mode (``exact_under_constraints`` is True): log p is renormalized over the local mask's allowed tokens
  at every position, and log q = log_softmax over them of log p / T. A server that computes its log-probabilities
  after its grammar mask (vLLM V1 does) shows its allowed tokens, and they must equal the local ones; either
  disagreement is a ``CapabilityError`` saying the server's grammar disagrees with the local one (build the local
  grammar with the server's whitespace setting). A server starts a grammar at the first generated token, so a
  row that continues from inside its grammar (power sampling resamples suffixes) is drawn token by token here,
  from the server's whole next-token distribution under the local mask: exact, one request per token. So is a
  masking constraint no server knows.
* ``score`` and ``topk`` modes (``exact_under_constraints`` is False; ``inexact_constraints_reason`` says why and
  how to start the server): a row that starts at the grammar's start still runs under the server's grammar, for
  plain draws (the baseline methods), but its ``logp``/``logq`` are the server's unmasked values and the
  ``Continuation`` has ``exact=False``; power sampling and SMC refuse such continuations. A row from inside a
  grammar cannot be drawn at all there (``CapabilityError``).

Layout: ``client`` holds ``RemoteLM`` (the probe, the modes, log p and log q from what a server returned, deadlines
and the thread pool); ``vllm_api`` and ``sglang_api`` each know one wire format behind the interface in ``wire``
(draw, score, and the probe's questions); ``masking`` applies a local constraint to what a server returned.
"""

from __future__ import annotations

from .client import APIS, RemoteLM, bounded_log_z

__all__ = ["APIS", "RemoteLM", "bounded_log_z"]
