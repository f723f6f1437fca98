"""The service layer: what the API, the dashboard and the CLI all do, once.

`core` builds the objects the app owns (`Services`) or, for commands that only touch the
database, a `Store`. `accounts` (users, tokens), `history` (audit and usage queries) and `models`
(load, unload, switch, reload) are the operations; each takes the `Actor` asking and writes the
audit record itself, so no caller can forget it. Nothing here knows HTTP.
"""
