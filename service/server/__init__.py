"""``byol-serve``: the HTTP server. The app and its middleware (``app``), the routes (``routes``), one request's
way from body to response (``pipeline``), what it admits (``admission``), its settings, state and errors."""
