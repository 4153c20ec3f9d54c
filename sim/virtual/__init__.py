"""Virtual time: models driven by a discrete-event clock (SimPy) instead of sockets.

The first piece of the virtual-time engine of issue 14: the published retry and
overload results (Brooker's backoff contention model, the SRE book's amplification
figures, Bronson et al.'s retry metastability) rebuilt on our own backoff, retry and
budget classes, unchanged, so that the engine's building blocks are checked against
known answers before they drive the real server core.

- `occ`: Brooker's optimistic-concurrency model.
- `amplification`: retry amplification against a failing backend.
- `metastable`: a FIFO server with timeouts and one retry, through an outage.
- `published`: the published figures and the checks (`python -m bench simulate --check`).
"""
