"""The admin web server (`relay-admin serve`): the JSON API, its OpenAPI document and the settings page.

    app.py        the FastAPI application: routers, static files, error rendering, security headers
    api.py        /api/v1/...: the CLI's `--json` twins, Bearer tokens
    pages.py      /login, /tenants, /tenants/{t}/settings: the settings screen, plain forms
    views.py      what the settings page shows, as data for its template
    errors.py     one value per outcome (401, 403, 404, 409, 422, 429, 503), rendered in one place
    security.py   headers (CSP), CSRF tokens, the sign-in throttle, safe redirects
    sessions.py   signed-in browsers: a random cookie, only its hash in the store
    i18n.py       the page's languages (nl default, en, fr) and their texts in locales/

Both the API and the page call `admin.services`, the same functions the CLI commands call.
"""
