"""The admin surface over HTTP: the JSON API (``api``) under ``/admin/api/v1``, its
callers authenticated by ``bearer``. Both call the admin service
(``tokendealer.admin``); ``TOKENDEALER_ADMIN=false`` leaves them unregistered (404)."""
