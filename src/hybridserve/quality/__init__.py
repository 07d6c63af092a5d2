"""The model-quality loop: what was answered, what turned out true, and how far the traffic
has moved from what the model was trained on.

- ``sinks.py``: where the prediction log and feedback are kept (Parquet files, a Redis stream,
  memory), behind one four-method interface;
- ``log.py``: the prediction log (sampling, a bounded queue, a writer thread);
- ``feedback.py``: true labels or values, joined to the answers they are about;
- ``figures.py``: online quality figures from (score, outcome) pairs;
- ``profile.py``: a model version's reference profile (feature bins, score distribution);
- ``drift.py``: PSI, KS and missing-value drift against that profile, over sliding windows;
- ``export.py``: the figures and drift as Prometheus gauges, refreshed by the server;
- ``review.py``: abstention (a route's ``review`` rule) and the review queue, whose labels
  feed back as outcomes;
- ``rollout.py`` and ``guardrails.py``: guarded progressive rollouts and their verdicts;
- ``advise.py``: measured costs turned into the cheapest serving mode that meets a route's
  freshness bound.

It sits between ``services`` (which opens the log) and the stores and registry below; the
paths above it (router, batch, stream, server) hand it their answers.
"""
