"""The admin service: one layer for every face of administration (the CLI, the admin API,
the console, ``apply``). Each change is checked here, made in one store transaction, and
recorded there as an audit event naming its actor; nothing here knows HTTP or click.

- ``clients``: register, edit, rotate, disable, enable, remove, show and list clients;
- ``accounts``: administrator accounts and their passwords (argon2id);
- ``errors``: what a face turns into its own error (a CLI line, a 4xx, a form message).
"""
