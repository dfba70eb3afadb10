"""`walq ui`: a live web dashboard of a queue, with the operator's actions.

Reading (walq.ui.source) goes through the same read-only paths as `walq stats`
and `walq dump`; acting (walq.ui.actions) through one small interface; the web
layer (walq.ui.app) only renders. Starlette and uvicorn come with `walq[ui]`.
"""
