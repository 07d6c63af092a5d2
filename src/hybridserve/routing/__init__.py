"""The online path: one request's answer per entity, never touching HTTP.

:mod:`.router` runs the steps (stored, compute now, the fallback chain) against
:mod:`.models` (the loaded versions and their micro-batchers); :mod:`.breaker`,
:mod:`.rollout` (sticky canary and shadow shares), :mod:`.shadow` and :mod:`.schema` (the
request and response shapes) serve it. The server is its only caller.
"""
