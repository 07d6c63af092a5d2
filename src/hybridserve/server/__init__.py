"""The ASGI server: a thin transport over the core.

:mod:`.app` is the composition root and the hot predict path; :mod:`.state` holds what one
server process built at start-up; :mod:`.requests` the helpers every Starlette endpoint
shares (the process state, the auth check, a bounded JSON body). The endpoints
(:mod:`.admin`, :mod:`.events`, :mod:`.v2`, :mod:`.docs`) take care of HTTP and delegate the
rest to the router, the registry and the stream sources. Nothing below this package imports
it, or starlette and uvicorn.
"""
