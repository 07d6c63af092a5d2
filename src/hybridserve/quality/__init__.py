"""The model-quality loop: what was answered, how it turned out, and what to do about it.

:mod:`.review` holds abstention (a route's ``review`` rule) and the review queue whose labels
feed back as outcomes; :mod:`.advise` turns measured costs into the cheapest serving mode
that meets a route's freshness bound.
"""
