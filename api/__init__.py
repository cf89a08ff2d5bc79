"""The on-demand scoring service: one study scored over HTTP with the nightly run's champion,
thresholds and database (``cxr api``; :func:`api.app.create_app`)."""
